#!/usr/bin/env python3
"""Create or check a blob container in Azurite (the Azure Storage emulator).

Used by `scripts/services up`, which runs before the project's virtualenv exists, so this
is stdlib only: a hand-made SharedKey-signed REST call instead of azure-storage-blob.

    azurite_container.py ensure NAME   create NAME if absent (201 or 409 are fine),
                                       then confirm it exists; exit 0 when it does
    azurite_container.py exists NAME   exit 0 when NAME exists, 1 when it does not
    azurite_container.py list          print the account's container names

Connection: --endpoint (default http://127.0.0.1:10000/devstoreaccount1, path-style as
Azurite serves it), --account and --key (default: Azurite's well-known dev account,
also documented in .env.example). Exit status 2 means Azurite could not be reached (or
answered 5xx): worth retrying; 1 is a definite failure (e.g. 403 bad signature).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from email.utils import formatdate

# Azurite's fixed development account; public, documented by Microsoft.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
API_VERSION = "2021-08-06"


class Unreachable(Exception):
    pass


def _string_to_sign(method: str, url: str, headers: dict[str, str], account: str) -> str:
    """Blob service SharedKey string-to-sign (API version 2015-02-21 and later)."""
    parts = urllib.parse.urlsplit(url)
    lower = {k.lower(): v for k, v in headers.items()}
    length = lower.get("content-length", "")
    if length == "0":
        length = ""  # since 2015-02-21 a zero length is signed as empty
    fields = [
        method,
        lower.get("content-encoding", ""),
        lower.get("content-language", ""),
        length,
        lower.get("content-md5", ""),
        lower.get("content-type", ""),
        "",  # Date: empty because x-ms-date is sent
        lower.get("if-modified-since", ""),
        lower.get("if-match", ""),
        lower.get("if-none-match", ""),
        lower.get("if-unmodified-since", ""),
        lower.get("range", ""),
    ]
    canon_headers = "".join(f"{k}:{lower[k].strip()}\n" for k in sorted(lower) if k.startswith("x-ms-"))
    # Path-style URL: the path already starts with /<account>, and the canonical
    # resource prefixes the account again (/devstoreaccount1/devstoreaccount1/...).
    resource = f"/{account}{parts.path or '/'}"
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    for name in sorted(query, key=str.lower):
        resource += f"\n{name.lower()}:{','.join(sorted(query[name]))}"
    return "\n".join(fields) + "\n" + canon_headers + resource


def request(method: str, url: str, account: str, key: str) -> tuple[int, bytes]:
    headers = {
        "x-ms-date": formatdate(usegmt=True),
        "x-ms-version": API_VERSION,
        "Content-Length": "0",
    }
    signature = base64.b64encode(
        hmac.new(
            base64.b64decode(key),
            _string_to_sign(method, url, headers, account).encode("utf-8"),
            hashlib.sha256,
        ).digest()
    ).decode()
    headers["Authorization"] = f"SharedKey {account}:{signature}"
    # No `data`: with a body urllib adds a Content-Type header that is not signed above.
    return send(urllib.request.Request(url, method=method, headers=headers))


def send(req: urllib.request.Request) -> tuple[int, bytes]:
    """(status, body) of one request; Unreachable when Azurite does not answer or answers 5xx.
    The query string (a SAS token, say) stays out of the message."""
    what = f"{req.get_method()} {req.full_url.split('?')[0]}"
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        if err.code >= 500:  # still starting up, or overloaded: worth a retry
            raise Unreachable(f"{what}: HTTP {err.code}") from err
        return err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        raise Unreachable(f"{what}: {err}") from err


def container_url(endpoint: str, name: str) -> str:
    return f"{endpoint.rstrip('/')}/{urllib.parse.quote(name)}?restype=container"


def exists(args: argparse.Namespace) -> bool:
    status, body = request("GET", container_url(args.endpoint, args.name), args.account, args.key)
    if status == 200:
        return True
    if status == 404:
        return False
    raise SystemExit(f"unexpected HTTP {status} checking container {args.name!r}: {body[:300]!r}")


def cmd_ensure(args: argparse.Namespace) -> int:
    status, body = request("PUT", container_url(args.endpoint, args.name), args.account, args.key)
    if status == 201:
        print(f"created container {args.name!r}")
    elif status == 409:
        print(f"container {args.name!r} already exists")
    else:
        print(f"HTTP {status} creating container {args.name!r}: {body[:300]!r}", file=sys.stderr)
        return 1
    return 0 if exists(args) else 1


def cmd_exists(args: argparse.Namespace) -> int:
    return 0 if exists(args) else 1


def cmd_list(args: argparse.Namespace) -> int:
    status, body = request("GET", f"{args.endpoint.rstrip('/')}/?comp=list", args.account, args.key)
    if status != 200:
        print(f"HTTP {status} listing containers: {body[:300]!r}", file=sys.stderr)
        return 1
    for name in ET.fromstring(body).iter("Name"):
        print(name.text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=f"http://127.0.0.1:10000/{DEV_ACCOUNT}")
    parser.add_argument("--account", default=DEV_ACCOUNT)
    parser.add_argument("--key", default=DEV_KEY)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("ensure", cmd_ensure), ("exists", cmd_exists)):
        p = sub.add_parser(name)
        p.add_argument("name")
        p.set_defaults(func=func)
    sub.add_parser("list").set_defaults(func=cmd_list)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Unreachable as err:
        print(f"Azurite not reachable: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
