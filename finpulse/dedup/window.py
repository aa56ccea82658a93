"""The trade window of one Kafka partition: which trade ids it has seen, and which are missing.

It is a fold over the partition's ticks in offset order, and nothing else: no clock, no I/O, no
batch boundaries. The same messages from the same starting state always give the same answers,
so a worker after a restart, a new owner after a rebalance, `replay` and `verify` all decide
exactly as the first reader did (finpulse/dedup/__init__.py rebuilds the state they start from).

Two kinds of ids:

  * numbered: the id is an integer (after an optional text prefix: Binance aggTrade's "a") and
    the feed numbers its trades consecutively per symbol (FINPULSE_SEQUENCE_FEEDS). Per
    (exchange, symbol, prefix) the window keeps the lowest and highest id it tracks and the holes
    between them: memory per gap, not per trade. An id inside [lo, hi] and outside every hole
    was seen: a duplicate. A new id above hi+1 opens a hole; a hole still open after
    `reorder_us` of trade time (a later trade of the symbol, or a checkpoint) is a sequence gap;
    an id that lands in a gap fills it (a late or re-sent trade).
  * text: any other id (UUIDs, venues that number per exchange). A 64-bit hash per id and the
    trade time it was first seen, newest `max_ids` kept.

Every CHECKPOINT_OFFSETS offsets the window forgets what lies more than `window_us` of trade time
behind the newest trade it saw: ids of a symbol that stopped trading, holes and text ids older
than that. A re-sent trade older than the window is then a new trade again (docs/feeds.md).
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

import numpy as np

from finpulse.records import SequenceGap

# Forgetting runs at the first message of each block of this many offsets: a point every reader
# of the partition passes at the same message, however its reads are cut into batches.
CHECKPOINT_OFFSETS = 10_000

PENDING, GAP, UNTRACKED = 0, 1, 2  # a hole: within the reorder window / a sequence gap / before tracking


@dataclass
class Hole:
    """Ids lo..hi of a key not seen yet."""

    lo: int
    hi: int
    state: int
    opened_us: int  # trade time of the trade that showed it
    gap_from: int  # the gap as first found (a fill keeps naming it, however it was split since)
    gap_to: int
    offset: int  # lineage of the trade that showed it
    tick_index: int


@dataclass
class Numbered:
    """The ids of one (exchange, symbol, prefix): lo..hi but the holes."""

    lo: int
    hi: int
    hi_us: int  # newest trade time among them
    holes: list[Hole] = field(default_factory=list)  # sorted by lo, disjoint, inside lo..hi
    pending: int = 0  # holes in PENDING state

    def hole_at(self, n: int) -> int | None:
        """Index of the hole holding id `n`, or None."""
        i = bisect.bisect_right([h.lo for h in self.holes], n) - 1
        return i if i >= 0 and self.holes[i].hi >= n else None


Key = tuple[str, str, str]  # (exchange, symbol, id prefix)


class PartitionWindow:
    def __init__(self, partition: int, window_us: int, reorder_us: int, max_ids: int, next_offset: int = 0):
        self.partition = partition
        self.window_us, self.reorder_us, self.max_ids = window_us, reorder_us, max_ids
        self.next_offset = next_offset  # every message below it is folded in
        self.checkpoint = -1  # the block (offset // CHECKPOINT_OFFSETS) whose checkpoint ran last
        self.max_us = 0  # newest trade time seen
        self.numbered: dict[Key, Numbered] = {}
        # text ids: recent ones in a dict, the rest in two sorted arrays (merged at checkpoints)
        self.recent: dict[int, int] = {}  # hash -> first trade time
        self.hashes = np.empty(0, dtype=np.int64)
        self.times = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ one step
    def checkpoint_due(self, offset: int) -> bool:
        return offset // CHECKPOINT_OFFSETS > self.checkpoint

    def run_checkpoint(self, offset: int, events: list[SequenceGap]) -> None:
        """Before the message at `offset`: confirm holes past the reorder window, forget what the
        window no longer covers, merge the recent text ids."""
        self.checkpoint = offset // CHECKPOINT_OFFSETS
        horizon = self.max_us - self.window_us
        for key, k in list(self.numbered.items()):
            if k.pending:
                self._confirm(key, k, self.max_us, offset, -1, events)
            if k.hi_us < horizon:
                del self.numbered[key]
                continue
            old = [i for i, h in enumerate(k.holes) if h.opened_us < horizon]
            if old:  # forget everything up to the newest old hole: its ids can no longer be told apart
                last = old[-1]
                k.lo = k.holes[last].hi + 1
                k.pending -= sum(1 for h in k.holes[: last + 1] if h.state == PENDING)
                del k.holes[: last + 1]
        self._merge_text(horizon)

    def numbered_id(self, key: Key, n: int, t_us: int, offset: int, tick_index: int, events: list[SequenceGap]) -> bool:
        """Fold one numbered id in; True when it is new (a duplicate: False)."""
        self.max_us = max(self.max_us, t_us)
        k = self.numbered.get(key)
        new = True
        if k is None:
            self.numbered[key] = Numbered(n, n, t_us)
            return True
        if n > k.hi:
            if n > k.hi + 1:
                k.holes.append(Hole(k.hi + 1, n - 1, PENDING, t_us, k.hi + 1, n - 1, offset, tick_index))
                k.pending += 1
            k.hi = n
        elif n < k.lo:  # below what is tracked: older than the window, or before it started
            if n < k.lo - 1:
                k.holes.insert(0, Hole(n + 1, k.lo - 1, UNTRACKED, t_us, n + 1, k.lo - 1, offset, tick_index))
            k.lo = n
        else:
            i = k.hole_at(n)
            if i is None:
                new = False
            else:
                self._fill(key, k, i, n, t_us, offset, tick_index, events)
        k.hi_us = max(k.hi_us, t_us)
        if k.pending:
            self._confirm(key, k, t_us, offset, tick_index, events)
        return new

    def consecutive(self, key: Key, first: int, last: int, last_us: int) -> bool:
        """The common case in one step: ids first..last, in order, right after what the key holds,
        with no hole waiting for its reorder window. False (nothing done) when that is not so."""
        k = self.numbered.get(key)
        if k is None:
            self.numbered[key] = Numbered(first, last, last_us)
        elif k.pending or first != k.hi + 1:
            return False
        else:
            k.hi, k.hi_us = last, max(k.hi_us, last_us)
        self.max_us = max(self.max_us, last_us)
        return True

    def text_id(self, exchange: str, symbol: str, trade_id: str, t_us: int) -> bool:
        """Fold one text id in; True when it is new."""
        self.max_us = max(self.max_us, t_us)
        h = text_hash(exchange, symbol, trade_id)
        if h in self.recent:
            return False
        i = int(np.searchsorted(self.hashes, h))
        if i < len(self.hashes) and self.hashes[i] == h:
            return False
        self.recent[h] = t_us
        return True

    # ------------------------------------------------------------------ holes
    def _fill(self, key: Key, k: Numbered, i: int, n: int, t_us: int, offset: int, tick_index: int, events) -> None:
        h = k.holes[i]
        if h.state == GAP:
            events.append(self._event(key, h, t_us, offset, tick_index, filled=n))
        parts = []
        if h.lo < n:
            parts.append(Hole(h.lo, n - 1, h.state, h.opened_us, h.gap_from, h.gap_to, h.offset, h.tick_index))
        if n < h.hi:
            parts.append(Hole(n + 1, h.hi, h.state, h.opened_us, h.gap_from, h.gap_to, h.offset, h.tick_index))
        k.holes[i : i + 1] = parts
        if h.state == PENDING:
            k.pending += len(parts) - 1

    def _confirm(self, key: Key, k: Numbered, now_us: int, offset: int, tick_index: int, events) -> None:
        """Holes of `k` open for the reorder window by trade time `now_us` become sequence gaps."""
        for h in k.holes:
            if h.state == PENDING and h.opened_us + self.reorder_us <= now_us:
                h.state = GAP
                k.pending -= 1
                h.gap_from, h.gap_to = h.lo, h.hi  # what is still missing once reordering had its chance
                events.append(self._event(key, h, h.opened_us, offset, tick_index))

    def _event(self, key: Key, h: Hole, seen_us: int, offset: int, tick_index: int, filled=None) -> SequenceGap:
        exchange, symbol, prefix = key
        return SequenceGap(
            self.partition, offset, tick_index, exchange, symbol, prefix, h.gap_from, h.gap_to, seen_us, filled
        )

    # ------------------------------------------------------------------ text ids
    def _merge_text(self, horizon: int) -> None:
        """Recent text ids into the sorted arrays; older than `horizon` dropped; the newest
        `max_ids` kept."""
        if not self.recent and not (len(self.times) and self.times.min() < horizon):
            return
        new = np.fromiter(self.recent.keys(), np.int64, len(self.recent))
        new_times = np.fromiter(self.recent.values(), np.int64, len(self.recent))
        order = np.argsort(new, kind="stable")
        new, new_times = new[order], new_times[order]
        # the recent ids into the sorted arrays where they belong: a copy, not a sort of everything
        at = np.searchsorted(self.hashes, new)
        hashes, times = np.insert(self.hashes, at, new), np.insert(self.times, at, new_times)
        keep = times >= horizon
        if not keep.all():
            hashes, times = hashes[keep], times[keep]
        if len(hashes) > self.max_ids:  # the newest max_ids, in hash order still (ties of time: by hash)
            cut = np.sort(np.lexsort((hashes, times))[len(hashes) - self.max_ids :])
            hashes, times = hashes[cut], times[cut]
        self.hashes, self.times = hashes, times
        self.recent = {}

    # ------------------------------------------------------------------ size
    @property
    def ids_held(self) -> int:
        """Text ids held (numbered ids cost nothing per id)."""
        return len(self.hashes) + len(self.recent)

    @property
    def holes(self) -> int:
        return sum(len(k.holes) for k in self.numbered.values())


def text_hash(exchange: str, symbol: str, trade_id: str) -> int:
    """A 64-bit hash of one trade's identity (blake2b: the same in every process, unlike hash())."""
    digest = hashlib.blake2b(f"{exchange}\x1f{symbol}\x1f{trade_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
