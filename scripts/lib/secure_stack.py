#!/usr/bin/env python3
"""Credentials and checks for the local stack's secured endpoints (`scripts/services up`).

    secure_stack.py sas [--container NAME --verify]
        print an ACCOUNT SAS token (no leading '?') for Azurite's dev account, signed with
        its well-known key: blob service, resource types sco, permissions racwdl,
        https,http, expiring 365 days from today (00:00Z, so a day's runs print the same
        token). With --verify it first proves Azurite checks it: listing the container's
        blobs with the token must answer 200 and with a tampered signature 403.
        Stdlib only (runs before the virtualenv exists).

    secure_stack.py kafka-scram --bootstrap HOST:PORT --user U --password-file F
        create or replace the user's SCRAM-SHA-512 credential through the broker at
        HOST:PORT (the PLAINTEXT listener). Needs confluent_kafka (the project venv).

    secure_stack.py kafka-check --bootstrap HOST:PORT --user U --password-file F --ca CA
        one metadata request over SASL_SSL (SCRAM-SHA-512, TLS trusting CA, host name
        verified). Needs confluent_kafka.

Exit status: 0 success; 1 a definite failure (refused credentials or certificate, HTTP
403 ...), with the reason on stderr; 2 the server could not be reached: worth retrying.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from azurite_container import DEV_ACCOUNT, DEV_KEY, Unreachable, send

SAS_VERSION = "2021-08-06"


class Retry(Exception):
    """The server is not reachable (yet)."""


# --- Azurite account SAS ----------------------------------------------------------------


def account_sas(
    account: str,
    key: str,
    expiry: str,
    *,
    services: str = "b",
    resource_types: str = "sco",
    permissions: str = "racwdl",
    protocol: str = "https,http",
    version: str = SAS_VERSION,
) -> str:
    """An account SAS token. String-to-sign for versions 2020-12-06 and later: the
    signed fields one per line, with the (empty) encryption scope and a final newline."""
    start = ip = encryption_scope = ""
    string_to_sign = "\n".join(
        [account, permissions, services, resource_types, start, expiry, ip, protocol, version, encryption_scope, ""]
    )
    sig = base64.b64encode(
        hmac.new(base64.b64decode(key), string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    ).decode()
    fields = {
        "sv": version,
        "ss": services,
        "srt": resource_types,
        "sp": permissions,
        "se": expiry,
        "spr": protocol,
        "sig": sig,
    }
    return "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in fields.items())


def tamper(token: str) -> str:
    """The same token with one character of the signature changed."""
    params = dict(urllib.parse.parse_qsl(token, keep_blank_values=True))
    sig = params["sig"]
    params["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    return "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in params.items())


def http_get(url: str) -> tuple[int, bytes]:
    try:
        return send(urllib.request.Request(url, headers={"x-ms-version": SAS_VERSION}))
    except Unreachable as err:
        raise Retry(str(err)) from err


def verify_sas(endpoint: str, container: str, token: str) -> None:
    """Raise SystemExit(1) unless the token lists the container and a tampered one is refused."""
    base = f"{endpoint.rstrip('/')}/{urllib.parse.quote(container)}?restype=container&comp=list&"
    status, body = http_get(base + token)
    if status != 200 or b"<EnumerationResults" not in body:
        raise SystemExit(f"listing container {container!r} with the SAS token answered HTTP {status}: {body[:300]!r}")
    status, body = http_get(base + tamper(token))
    if status != 403:
        raise SystemExit(
            f"a SAS token with a tampered signature answered HTTP {status}, not 403: Azurite does not check SAS"
        )


def cmd_sas(args: argparse.Namespace) -> int:
    expiry = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=args.days)).strftime("%Y-%m-%dT00:00:00Z")
    token = account_sas(args.account, args.key, expiry)
    if args.verify:
        verify_sas(args.endpoint, args.container, token)
    print(token)
    return 0


# --- Kafka SCRAM ------------------------------------------------------------------------


def _password(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def cmd_kafka_scram(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": args.bootstrap, "log_level": 0})
    upsert = UserScramCredentialUpsertion(
        args.user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), _password(args.password_file).encode()
    )
    try:
        admin.alter_user_scram_credentials([upsert], request_timeout=args.timeout)[args.user].result()
    except KafkaException as err:
        kerr = err.args[0]
        if getattr(kerr, "retriable", lambda: False)() or "timed out" in str(kerr).lower():
            raise Retry(f"setting the SCRAM credential of {args.user!r}: {kerr}") from err
        raise SystemExit(f"setting the SCRAM-SHA-512 credential of {args.user!r} failed: {kerr}") from err
    return 0


def cmd_kafka_check(args: argparse.Namespace) -> int:
    import time

    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    admin = AdminClient(
        {
            "bootstrap.servers": args.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": args.user,
            "sasl.password": _password(args.password_file),
            "ssl.ca.location": args.ca,
            "error_cb": errors.append,
            "log_level": 0,
        }
    )
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    # Short metadata requests, serving error callbacks between them: a refused password
    # or certificate is reported through error_cb, not by list_topics.
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=1).brokers:
                return 0
        except KafkaException as err:
            last = str(err.args[0])
        admin.poll(0)
        for kerr in errors:
            if kerr.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
                raise SystemExit(f"{args.bootstrap} refused us: {kerr.str()}")
            last = kerr.str()
    raise Retry(f"no metadata from {args.bootstrap} over SASL_SSL within {args.timeout}s ({last})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sas", help="print an account SAS token for Azurite")
    p.add_argument("--endpoint", default=f"http://127.0.0.1:10000/{DEV_ACCOUNT}")
    p.add_argument("--account", default=DEV_ACCOUNT)
    p.add_argument("--key", default=DEV_KEY)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--container", default="delta-lake")
    p.add_argument("--verify", action="store_true")
    p.set_defaults(func=cmd_sas)

    for name, func in (("kafka-scram", cmd_kafka_scram), ("kafka-check", cmd_kafka_check)):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--user", required=True)
        p.add_argument("--password-file", required=True)
        p.add_argument("--timeout", type=float, default=10)
        if name == "kafka-check":
            p.add_argument("--ca", required=True)
        p.set_defaults(func=func)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Retry as err:
        print(f"not reachable: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
