"""Registry-framed messages (a zero byte, a 4-byte schema id, the payload), valid and hostile.

`framed(rng, frames, count)` yields (label, value) pairs made from `frames`, a list of (format,
framed value) that a real registry serializer wrote (its schema ids are known to the registry the
ingester asks). Labels follow the other kinds' rules:

  * valid:<format>            - a frame as the serializer wrote it: must land whole
  * mutated:<format>:<how>    - bytes flipped, cut short, grown, or the id pointed at another
                                schema: rows or a reject, never a failure (a flipped Protobuf or
                                cut one can still be a readable record)
  * broken:<how>              - no reader can take it (an id no registry gives, a frame shorter
                                than its prefix, an id with no payload): rejected whole
"""

from __future__ import annotations

import random
from collections.abc import Iterator

NO_SUCH_ID = 0x7FFF_FF00  # far above any id a registry hands out in a test run


def _flip(b: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(5, len(b))] = rng.randrange(256)


def _mutated(fmt: str, value: bytes, rng: random.Random) -> tuple[str, bytes]:
    b = bytearray(value)
    how = rng.choice(("flip", "cut", "grow", "other_id"))
    if how == "flip":
        _flip(b, rng)
    elif how == "cut":
        del b[rng.randrange(6, len(b)) :]
    elif how == "grow":
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:  # another schema's id: it may read the bytes, or not
        b[1:5] = rng.randrange(1, 60).to_bytes(4, "big")
    return f"mutated:{fmt}:{how}", bytes(b)


def _broken(value: bytes, rng: random.Random) -> tuple[str, bytes]:
    how = rng.choice(("unknown_id", "short_frame", "no_payload"))
    if how == "unknown_id":
        return "broken:framed_unknown_id", bytes([0]) + (NO_SUCH_ID + rng.randrange(256)).to_bytes(4, "big") + value[5:]
    if how == "short_frame":
        return "broken:framed_short", value[: rng.randrange(1, 5)]
    return "broken:framed_no_payload", value[:5]


def framed(rng: random.Random, frames: list[tuple[str, bytes]], count: int) -> Iterator[tuple[str, bytes]]:
    """`count` framed messages: about 30% valid, 55% mutated, 15% broken."""
    for _ in range(count):
        fmt, value = rng.choice(frames)
        pick = rng.random()
        if pick < 0.30:
            yield f"valid:{fmt}", value
        elif pick < 0.85:
            yield _mutated(fmt, value, rng)
        else:
            yield _broken(value, rng)
