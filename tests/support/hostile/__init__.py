"""Hostile-but-plausible Kafka message values, for fuzzing the whole pipeline (issue #9).

`messages(seed, count)` yields (label, value) pairs: `value` is the raw bytes of a Kafka record
(None: a tombstone) and `label` says how it was made (`valid:kraken`, `mutated:alpaca`,
`broken:deep_arrays`), for reports. Three kinds, from one `random.Random(seed)`:

  * valid   - a message of one feed shape (SHAPES), as the exchange sends it; ~30%
  * mutated - such a message with 1-3 MUTATIONS: a field (at any depth, envelope keys included)
              replaced by a hostile value, dropped, repeated, an extra key, a frame element of
              the wrong type...
  * broken  - frames no parser can take whole (BROKEN): bad UTF-8, truncated JSON, deep nesting,
              scalars, tombstones, over 1 MiB...

The first messages cover every shape valid, every (shape, mutation) pair, every broken kind and
every hostile text in each text field of a canonical tick once; the rest are drawn at random.

Modules: `shapes` (valid messages per feed shape), `values` (pools of hostile strings, numbers,
times, wrong types), `mutations` (MUTATIONS, `mutated`), `frames` (BROKEN) and `jsontext` (JSON
written by hand, as orjson/json cannot write duplicate keys, lone surrogate escapes or 1e400: `Raw`
text goes in verbatim and `Obj` is an object as a list of (key, value) pairs, so a key may repeat).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from support.hostile.frames import BROKEN
from support.hostile.jsontext import MIB, Obj, Raw, dumps, encode, to_tree
from support.hostile.mutations import MUTATIONS, mutated
from support.hostile.shapes import SHAPES, canonical
from support.hostile.values import RAW_TEXT, TEXT, hostile, hostile_key

__all__ = [
    "BROKEN",
    "MIB",
    "MUTATIONS",
    "SHAPES",
    "Obj",
    "Raw",
    "dumps",
    "encode",
    "hostile",
    "hostile_key",
    "messages",
    "mutated",
]


def _canonical_with(rng: random.Random, now_ms: int, key: str, value: Any) -> bytes:
    tick = to_tree(canonical(rng, now_ms))
    tick[:] = [(k, v) for k, v in tick if k != key] + [(key, value)]
    return dumps(tick).encode()  # ASCII only: what the canonical fast path reads


# ------------------------------------------------------------------------- the stream
def messages(seed: int, count: int, now_ms: int | None = None) -> Iterator[tuple[str, bytes | None]]:
    """`count` (label, value) pairs; equal seeds (and `now_ms`) give equal messages."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    coverage: list[Callable[[], tuple[str, bytes | None]]] = []
    for shape in SHAPES:
        coverage.append(lambda s=shape: (f"valid:{s}", encode(SHAPES[s](rng, now_ms), rng)))
        for mutation in MUTATIONS:
            coverage.append(lambda s=shape, m=mutation: (f"mutated:{s}:{m}", mutated(s, rng, now_ms, m)))
    for name, (_, build) in BROKEN.items():
        coverage.append(lambda n=name, b=build: (f"broken:{n}", b(rng, now_ms)))
    for text in TEXT + RAW_TEXT:  # each hostile text in each text field of a canonical tick, \u-escaped
        for key in ("symbol", "exchange", "side"):
            coverage.append(lambda t=text, k=key: (f"mutated:canonical:{k}", _canonical_with(rng, now_ms, k, t)))
    rng.shuffle(coverage)
    broken_names = list(BROKEN)
    broken_weights = [w for w, _ in BROKEN.values()]
    for i in range(count):
        if i < len(coverage):
            yield coverage[i]()
            continue
        pick = rng.random()
        if pick < 0.30:
            shape = rng.choice(list(SHAPES))
            yield f"valid:{shape}", encode(SHAPES[shape](rng, now_ms), rng)
        elif pick < 0.90:
            shape = rng.choice(list(SHAPES))
            yield f"mutated:{shape}", mutated(shape, rng, now_ms)
        else:
            name = rng.choices(broken_names, broken_weights)[0]
            yield f"broken:{name}", BROKEN[name][1](rng, now_ms)
