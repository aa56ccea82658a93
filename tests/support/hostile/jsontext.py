"""JSON written by hand, as orjson/json cannot write duplicate keys, lone surrogate escapes or 1e400:
`Raw` text goes in verbatim and `Obj` is an object as a list of (key, value) pairs, so a key may
repeat. `to_tree` turns plain dicts and lists into such a tree, for mutations to change in place.
"""

from __future__ import annotations

import json
import random
from typing import Any

MIB = 1 << 20


class Raw(str):
    """JSON text written as is (a number orjson cannot write, a lone surrogate escape...)."""


class Obj(list):
    """A JSON object as (key, value) pairs: keys may repeat, keys may be Raw."""


def dumps(value: Any, ascii_only: bool = True, sep: str = ",") -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # only finite floats reach here; NaN and 1e400 are Raw
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, dict):
        value = Obj(value.items())
    if isinstance(value, Obj):
        return "{" + sep.join(f"{dumps(k, ascii_only)}:{dumps(v, ascii_only, sep)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + sep.join(dumps(v, ascii_only, sep) for v in value) + "]"
    raise TypeError(type(value))


def encode(value: Any, rng: random.Random) -> bytes:
    """Bytes of `value`; non-ASCII text written as UTF-8 half the time, so a lone surrogate is then
    written as its (invalid) UTF-8 bytes rather than as a \\ud800 escape."""
    return dumps(value, rng.random() < 0.5, rng.choice([",", ", ", ",\n  "])).encode("utf-8", "surrogatepass")


def to_tree(value: Any) -> Any:
    """dicts -> Obj (mutable, repeatable keys), lists copied, recursively."""
    if isinstance(value, dict):
        return Obj((k, to_tree(v)) for k, v in value.items())
    if isinstance(value, list):
        return [to_tree(v) for v in value]
    return value
