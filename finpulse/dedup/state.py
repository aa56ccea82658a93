"""A trade window (window.py) as bytes and back: what the sinks keep as its snapshot.

Layout: MAGIC, a 4-byte little-endian length, a JSON header (positions, and per numbered key its
lo, hi, newest time and holes), then the text ids as raw little-endian int64 arrays (the merged
hashes and their times, then the recent ones and theirs). Dumping changes nothing in the window. No pickle: a snapshot is read from a database, and reading it must never run code.
"""

from __future__ import annotations

import struct

import numpy as np
import orjson

from finpulse.dedup.window import Hole, Numbered, PartitionWindow

MAGIC = b"FPTW1\n"


class BadSnapshot(ValueError):
    """Bytes that are no snapshot of this release (then the window is rebuilt from Kafka)."""


def dump(w: PartitionWindow) -> bytes:
    header = {
        "partition": w.partition,
        "next_offset": w.next_offset,
        "checkpoint": w.checkpoint,
        "max_us": w.max_us,
        "text": len(w.hashes),
        "recent": len(w.recent),
        "numbered": [
            [
                *key,
                k.lo,
                k.hi,
                k.hi_us,
                [[h.lo, h.hi, h.state, h.opened_us, h.gap_from, h.gap_to, h.offset, h.tick_index] for h in k.holes],
            ]
            for key, k in w.numbered.items()
        ],
    }
    head = orjson.dumps(header)
    return b"".join(
        [
            MAGIC,
            struct.pack("<I", len(head)),
            head,
            w.hashes.astype("<i8").tobytes(),
            w.times.astype("<i8").tobytes(),
            np.fromiter(w.recent.keys(), "<i8", len(w.recent)).tobytes(),
            np.fromiter(w.recent.values(), "<i8", len(w.recent)).tobytes(),
        ]
    )


def load(blob: bytes, window_us: int, reorder_us: int, max_ids: int) -> PartitionWindow:
    """The window `dump` wrote; the settings given are today's (they may have changed since)."""
    try:
        if not blob.startswith(MAGIC):
            raise BadSnapshot("not a trade window snapshot")
        (size,) = struct.unpack_from("<I", blob, len(MAGIC))
        start = len(MAGIC) + 4
        header = orjson.loads(blob[start : start + size])
        w = PartitionWindow(header["partition"], window_us, reorder_us, max_ids, header["next_offset"])
        w.checkpoint, w.max_us = header["checkpoint"], header["max_us"]
        for exchange, symbol, prefix, lo, hi, hi_us, holes in header["numbered"]:
            k = Numbered(lo, hi, hi_us, [Hole(*h) for h in holes])
            k.pending = sum(1 for h in k.holes if h.state == 0)
            w.numbered[(exchange, symbol, prefix)] = k
        n, r = header["text"], header["recent"]
        at = start + size
        if len(blob) != at + 16 * (n + r):
            raise BadSnapshot(f"{len(blob)} bytes, expected {at + 16 * (n + r)}")
        arrays = []
        for count in (n, n, r, r):
            arrays.append(np.frombuffer(blob, dtype="<i8", count=count, offset=at).astype(np.int64))
            at += 8 * count
        w.hashes, w.times, keys, times = arrays
        w.recent = dict(zip(keys.tolist(), times.tolist()))
        return w
    except BadSnapshot:
        raise
    except (KeyError, TypeError, ValueError, struct.error) as exc:
        raise BadSnapshot(f"unreadable trade window snapshot: {exc}") from None
