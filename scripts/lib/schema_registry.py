"""A small schema registry for the local stack and the tests, serving the part of Confluent Schema
Registry's REST API that producers and consumers use, written against Confluent's API reference:
register a schema under a subject (the same schema gets the same id), schemas by id and by guid,
a subject's versions, look-ups, BACKWARD compatibility checks (a refused schema is HTTP 409), the
compatibility level, optional HTTP basic auth and TLS. Schemas are kept in a JSON file, so a
restart keeps their ids.

It is NOT Confluent's registry (nor Apicurio): FinPulse itself talks to any registry through
confluent-kafka's SchemaRegistryClient, and compose.yaml runs Confluent's own for Docker users.

    python scripts/lib/schema_registry.py --port 8081 --data .stack/registry/schemas.json \
        [--users FILE (user:password lines)] [--certfile PEM --keyfile PEM]
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import re
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
TYPES = ("AVRO", "PROTOBUF", "JSON")


class Refused(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Store:
    """Schemas (global ids) and subjects (versions of schema ids), in a JSON file."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        data = json.loads(path.read_text()) if path.is_file() else {}
        self.schemas: dict[str, dict] = data.get("schemas", {})  # id -> {schema, schemaType, guid, references}
        self.subjects: dict[str, list[int]] = data.get("subjects", {})
        self.config: dict[str, str] = data.get("config", {"": "BACKWARD"})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"schemas": self.schemas, "subjects": self.subjects, "config": self.config}))
        os.replace(tmp, self.path)

    def schema(self, schema_id: int) -> dict:
        found = self.schemas.get(str(schema_id))
        if found is None:
            raise Refused(404, 40403, f"Schema {schema_id} not found")
        return found

    def by_guid(self, guid: str) -> tuple[int, dict]:
        for sid, s in self.schemas.items():
            if s["guid"] == guid:
                return int(sid), s
        raise Refused(404, 40403, f"Schema {guid} not found")

    def versions(self, subject: str) -> list[int]:
        if subject not in self.subjects:
            raise Refused(404, 40401, f"Subject '{subject}' not found.")
        return self.subjects[subject]

    def version(self, subject: str, version: str) -> tuple[int, int]:
        ids = self.versions(subject)
        if version in ("latest", "-1"):
            return len(ids), ids[-1]
        if not version.isdigit() or not 1 <= int(version) <= len(ids):
            raise Refused(404, 40402, f"Version {version} not found.")
        return int(version), ids[int(version) - 1]

    def find(self, schema_type: str, text: str) -> int | None:
        for sid, s in self.schemas.items():
            if s["schemaType"] == schema_type and _same(schema_type, s["schema"], text):
                return int(sid)
        return None

    def register(self, subject: str, body: dict) -> dict:
        schema_type, text = _checked(body)
        with self.lock:
            existing = self.find(schema_type, text)
            ids = self.subjects.get(subject, [])
            if existing is not None and existing in ids:
                return {"id": existing, "guid": self.schemas[str(existing)]["guid"]}
            level = self.config.get(subject, self.config.get("", "BACKWARD"))
            if ids and level != "NONE":
                problems = compatibility(self.schemas[str(ids[-1])], schema_type, text)
                if problems:
                    raise Refused(409, 409, "Schema being registered is incompatible with an earlier schema: " + "; ".join(problems))
            if existing is None:
                existing = max((int(i) for i in self.schemas), default=0) + 1
                self.schemas[str(existing)] = {
                    "schema": text,
                    "schemaType": schema_type,
                    "guid": str(uuid.uuid4()),
                    "references": body.get("references") or [],
                }
            self.subjects[subject] = [*ids, existing]
            self.save()
            return {"id": existing, "guid": self.schemas[str(existing)]["guid"]}


def _checked(body: dict) -> tuple[str, str]:
    schema_type = body.get("schemaType") or "AVRO"
    text = body.get("schema")
    if schema_type not in TYPES or not isinstance(text, str):
        raise Refused(422, 42201, f"Invalid schema: schemaType {schema_type!r}, schema {type(text).__name__}")
    try:
        if schema_type == "AVRO":
            import fastavro

            fastavro.parse_schema(json.loads(text))
        elif schema_type == "JSON":
            json.loads(text)
        elif not re.search(r"\bmessage\s", text):  # not .proto text: the serialized FileDescriptorProto
            from google.protobuf import descriptor_pb2

            descriptor_pb2.FileDescriptorProto().ParseFromString(base64.standard_b64decode(text))
    except Exception as exc:
        raise Refused(422, 42201, f"Invalid schema: {exc}") from None
    return schema_type, text


def _same(schema_type: str, a: str, b: str) -> bool:
    if schema_type == "PROTOBUF":
        return a == b
    return json.loads(a) == json.loads(b)


def compatibility(old: dict, schema_type: str, text: str) -> list[str]:
    """BACKWARD: data written with `old` can be read with the new schema. For Avro records: each
    field the new schema adds has a default, and a field both have keeps its type (or widens it as
    Avro promotes: int to long, float or double; long to float or double; float to double)."""
    if old["schemaType"] != schema_type:
        return [f"schema type {schema_type} differs from {old['schemaType']}"]
    if schema_type != "AVRO":
        return []  # Protobuf and JSON Schema: any change is taken
    before, after = json.loads(old["schema"]), json.loads(text)
    if not (isinstance(before, dict) and isinstance(after, dict) and before.get("type") == after.get("type") == "record"):
        return [] if before == after else ["only record schemas are checked, and these differ"]
    had = {f["name"]: f for f in before.get("fields", [])}
    promotions = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"}}
    problems = []
    for field in after.get("fields", []):
        was = had.get(field["name"])
        if was is None:
            if "default" not in field:
                problems.append(f"reader field '{field['name']}' is new and has no default")
        elif was["type"] != field["type"] and field["type"] not in promotions.get(str(was["type"]), set()):
            problems.append(f"field '{field['name']}' changed type from {was['type']} to {field['type']}")
    return problems


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        users = self.server.users
        if not users:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(given[6:]).decode().partition(":")
            except ValueError:
                user = password = ""
            if user in users and hmac.compare_digest(users[user], password):
                return True
        self.send_response(401)
        body = json.dumps({"error_code": 40101, "message": "Unauthorized"}).encode()
        self.send_header("WWW-Authenticate", 'Basic realm="schema-registry"')
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return False

    def _route(self, method: str) -> None:
        if not self._authorised():
            return
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        store = self.server.store
        try:
            self._answer(200, self._dispatch(method, parts, query, body, store))
        except Refused as exc:
            self._answer(exc.status, {"error_code": exc.code, "message": exc.message})
        except (ValueError, KeyError) as exc:
            self._answer(422, {"error_code": 42201, "message": f"Invalid request: {exc}"})

    def _dispatch(self, method: str, p: list[str], query: dict, body: dict, store: Store) -> object:
        if method == "GET" and not p:
            return {}
        if method == "GET" and p == ["schemas", "types"]:
            return list(TYPES)
        if method == "GET" and p[:2] == ["schemas", "ids"] and len(p) >= 3:
            sid = int(p[2])
            s = store.schema(sid)
            if len(p) == 4 and p[3] == "versions":
                return [{"subject": n, "version": i + 1} for n, ids in store.subjects.items() for i, x in enumerate(ids) if x == sid]
            if len(p) == 4 and p[3] == "subjects":
                return [n for n, ids in store.subjects.items() if sid in ids]
            return _shown(sid, s)
        if method == "GET" and p[:2] == ["schemas", "guids"] and len(p) == 3:
            return _shown(*store.by_guid(p[2]))
        if method == "GET" and p == ["subjects"]:
            return sorted(store.subjects)
        if p[:1] == ["subjects"] and len(p) >= 2:
            subject = p[1]
            if method == "GET" and p[2:] == ["versions"]:
                return list(range(1, len(store.versions(subject)) + 1))
            if method == "GET" and len(p) == 4 and p[2] == "versions":
                version, sid = store.version(subject, p[3])
                return {"subject": subject, "version": version, **_shown(sid, store.schema(sid))}
            if method == "POST" and p[2:] == ["versions"]:
                return store.register(subject, body)
            if method == "POST" and len(p) == 2:
                schema_type, text = _checked(body)
                sid = store.find(schema_type, text)
                ids = store.versions(subject)
                if sid is None or sid not in ids:
                    raise Refused(404, 40403, "Schema not found")
                return {"subject": subject, "version": ids.index(sid) + 1, **_shown(sid, store.schema(sid))}
        if method == "POST" and p[:2] == ["compatibility", "subjects"] and len(p) == 5:
            version, sid = store.version(p[2], p[4])
            schema_type, text = _checked(body)
            problems = compatibility(store.schema(sid), schema_type, text)
            return {"is_compatible": not problems, "messages": problems}
        if p and p[0] == "config":
            key = p[1] if len(p) > 1 else ""
            if method == "PUT":
                level = body.get("compatibility") or body.get("compatibilityLevel")
                store.config[key] = level
                store.save()
                return {"compatibility": level}
            return {"compatibilityLevel": store.config.get(key, store.config.get("", "BACKWARD"))}
        if p == ["mode"]:
            return {"mode": "READWRITE"}
        raise Refused(404, 404, f"HTTP 404 Not Found: {method} /{'/'.join(p)}")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")


def _shown(sid: int, s: dict) -> dict:
    out = {"id": sid, "guid": s["guid"], "schema": s["schema"], "references": s["references"]}
    if s["schemaType"] != "AVRO":
        out["schemaType"] = s["schemaType"]
    return out


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, store: Store, users: dict[str, str], verbose: bool = False):
        self.store, self.users, self.verbose = store, users, verbose
        super().__init__(address, Handler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081, help="plain HTTP, no sign-in (as the stack's plaintext Kafka)")
    ap.add_argument("--data", type=Path, required=True, help="JSON file keeping the schemas")
    ap.add_argument("--users", type=Path, help="file of user:password lines: HTTP basic auth on the secured port")
    ap.add_argument("--certfile", help="the secured port's certificate (PEM)")
    ap.add_argument("--keyfile", help="its private key (PEM)")
    ap.add_argument("--secure-port", type=int, help="also serve HTTPS (--certfile) with basic auth (--users) here")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    users = {}
    if args.users:
        for line in args.users.read_text().splitlines():
            if ":" in line:
                user, password = line.split(":", 1)
                users[user] = password
    store = Store(args.data)
    plain = Server((args.host, args.port), store, {} if args.secure_port else users, args.verbose)
    if args.secure_port:
        if not (args.certfile and users):
            ap.error("--secure-port needs --certfile/--keyfile and --users")
        secured = Server((args.host, args.secure_port), store, users, args.verbose)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)
        secured.socket = context.wrap_socket(secured.socket, server_side=True)
        threading.Thread(target=secured.serve_forever, daemon=True).start()
        print(f"schema registry on https://{args.host}:{args.secure_port} (basic auth)", flush=True)
    elif args.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)
        plain.socket = context.wrap_socket(plain.socket, server_side=True)
    print(f"schema registry on {'https' if args.certfile and not args.secure_port else 'http'}://{args.host}:{args.port}", flush=True)
    plain.serve_forever()


if __name__ == "__main__":
    main()
