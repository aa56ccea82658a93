"""Mutations of a valid message: a field (at any depth, envelope keys included) replaced by a hostile
value, dropped, repeated, an extra key, a frame element of the wrong type..."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

from support.hostile.jsontext import Obj, Raw, dumps, encode, to_tree
from support.hostile.shapes import SHAPES
from support.hostile.values import WRONG_TYPES, hostile, hostile_key


def _objects(tree: Any) -> Iterator[Obj]:
    if isinstance(tree, Obj):
        yield tree
    if isinstance(tree, list):  # Obj is a list of pairs: this walks into its values too
        for item in tree:
            yield from _objects(item[1] if isinstance(tree, Obj) else item)


def _arrays(tree: Any) -> Iterator[list]:
    for container in _containers(tree):
        if not isinstance(container, Obj) and container:
            yield container


def _containers(tree: Any) -> Iterator[list]:
    if isinstance(tree, list):
        yield tree
        for item in tree:
            yield from _containers(item[1] if isinstance(tree, Obj) else item)


def _slots(tree: Any) -> list[tuple[list, int]]:
    return [(c, i) for c in _containers(tree) for i in range(len(c))]


def replace(tree, rng, now_ms):
    slots = _slots(tree)
    if not slots:
        return
    container, i = rng.choice(slots)
    value = hostile(rng, now_ms)
    container[i] = (container[i][0], value) if isinstance(container, Obj) else value


def drop(tree, rng, now_ms):
    slots = _slots(tree)
    if not slots:
        return
    container, i = rng.choice(slots)
    del container[i]


def extra_key(tree, rng, now_ms):
    objects = list(_objects(tree))
    if objects:
        rng.choice(objects).append((hostile_key(rng), hostile(rng, now_ms)))


def duplicate_key(tree, rng, now_ms):
    objects = [o for o in _objects(tree) if o] or list(_objects(tree))
    if not objects:
        return
    obj = rng.choice(objects)
    if not obj:
        obj.extend([("p", 1), ("p", 2)])
        return
    key, value = rng.choice(obj)
    if rng.random() < 0.3 and isinstance(key, str) and key and not isinstance(key, Raw):
        key = Raw('"' + "".join(f"\\u{ord(c):04x}" for c in key[:1]) + json.dumps(key[1:])[1:])  # same key, escaped
    obj.insert(rng.randrange(len(obj) + 1), (key, value if rng.random() < 0.4 else hostile(rng, now_ms)))


def wrong_element(tree, rng, now_ms):
    arrays = list(_arrays(tree))
    if not arrays:
        return replace(tree, rng, now_ms)
    array = rng.choice(arrays)
    array[rng.randrange(len(array))] = copy.deepcopy(rng.choice(WRONG_TYPES + ["t", 0, Obj()]))


def many_trades(tree, rng, now_ms):
    arrays = list(_arrays(tree))
    if not arrays:
        return replace(tree, rng, now_ms)
    array = rng.choice(arrays)
    room = 60_000 // (len(dumps(array[0])) + 1)  # a frame of many trades, but not of megabytes
    array.extend(copy.deepcopy(array[0]) for _ in range(min(rng.randint(50, 400), room)))


# name -> mutate(tree, rng, now_ms), in place on a tree of Obj and lists
MUTATIONS: dict[str, Callable[[list, random.Random, int], None]] = {
    f.__name__: f for f in (replace, drop, extra_key, duplicate_key, wrong_element, many_trades)
}


def mutated(shape: str, rng: random.Random, now_ms: int, first: str | None = None) -> bytes:
    tree = to_tree(SHAPES[shape](rng, now_ms))
    names = [first] if first else []
    names += rng.choices(list(MUTATIONS), weights=[6, 2, 2, 1, 1, 0.3], k=rng.randint(1 - len(names), 3 - len(names)))
    for name in names:
        MUTATIONS[name](tree, rng, now_ms)
    return encode(tree, rng)
