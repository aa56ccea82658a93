"""Broken frames: bytes no parser can take whole (bad UTF-8, truncated JSON, deep nesting, scalars,
tombstones, over 1 MiB...)."""

from __future__ import annotations

import random
from collections.abc import Callable

from support.hostile.jsontext import MIB, dumps, encode, to_tree
from support.hostile.shapes import SHAPES, canonical


def _valid(rng: random.Random, now_ms: int) -> bytes:
    return encode(SHAPES[rng.choice(list(SHAPES))](rng, now_ms), rng)


def _cut(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def _bad_utf8(rng, now_ms):
    data = _valid(rng, now_ms)
    i = rng.randrange(len(data) + 1)
    return (
        data[:i]
        + rng.choice(
            [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"]
        )
        + data[i:]
    )


def _over_limit(rng, now_ms):
    head = encode(to_tree(canonical(rng, now_ms)), rng)[:-1]
    filler = MIB + rng.randrange(1, 4096) - len(head)
    return head + b',"pad":"' + b"x" * filler + b'"}'


# name -> (weight among broken frames, builder(rng, now_ms) -> bytes | None)
BROKEN: dict[str, tuple[float, Callable[[random.Random, int], bytes | None]]] = {
    "invalid_utf8": (10, _bad_utf8),
    "truncated": (10, lambda rng, now: _cut(_valid(rng, now), rng)),
    "empty": (2, lambda rng, now: b""),
    "whitespace": (2, lambda rng, now: rng.choice([b" ", b"\n", b" \t\r\n "])),
    "tombstone": (3, lambda rng, now: None),
    "scalar": (
        5,
        lambda rng, now: rng.choice(
            [
                b"1",
                b"-0",
                b"1e400",
                b'"AAPL"',
                b"true",
                b"null",
                b"NaN",
                b"[]",
                b"{}",
                b"[[]]",
                b"[{}]",
                b'"\\ud800"',
                b'"\x00"',
            ]
        ),
    ),
    "deep_arrays": (1, lambda rng, now: b"[" * rng.choice([1025, 100_000]) + b"]" * rng.choice([0, 1025])),
    "deep_objects": (1, lambda rng, now: b'{"a":' * 5000 + b"1" + b"}" * 5000),
    "raw_control_in_string": (3, lambda rng, now: _valid(rng, now).replace(b'"', b'"\x00', 1)),
    "bom": (2, lambda rng, now: b"\xef\xbb\xbf" + _valid(rng, now)),
    "trailing_garbage": (3, lambda rng, now: _valid(rng, now) + rng.choice([b"x", b"\x00", b"}", b" {}"])),
    "two_documents": (2, lambda rng, now: _valid(rng, now) + b"\n" + _valid(rng, now)),
    "latin1": (2, lambda rng, now: dumps(canonical(rng, now) | {"exchange": "B\u00f6rse"}, False).encode("latin-1")),
    "over_1mib": (0.02, _over_limit),
}
