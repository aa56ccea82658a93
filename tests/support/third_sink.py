"""A throw-away third kind of sink, for the test that a sink is one module and one registry line:
ticks kept in memory of this process (nothing durable: it exists to be listed, not to be used)."""

from __future__ import annotations

from finpulse.batch import FlushPolicy, Offsets, TickBatch
from finpulse.sinks.base import Filled, Summary, Written

_HELD: dict[int, int] = {}  # partition -> position, shared by every instance of this process
_ROWS: list[tuple] = []


class MemorySink:
    name = "memory"
    keeps_rejects = False
    describes = ("rows",)

    @classmethod
    def from_settings(cls, settings, topic_id=None, link=None) -> MemorySink:
        return cls()

    @staticmethod
    def location(settings) -> dict[str, object]:
        return {"process": "this one"}

    @staticmethod
    def headline(section) -> str:
        return f"memory {section['rows']} rows"

    @staticmethod
    def services(settings, links, workers) -> list:
        return []

    @staticmethod
    def rules(settings):
        return None

    @staticmethod
    def migrate(settings, keep_old, chunk, say) -> list[str]:
        return []

    @staticmethod
    def prepare(settings) -> list[tuple[str, bool]]:
        return [("memory of this process", False)]

    where, flush, topic_id = "memory", FlushPolicy(), None

    def own_topic(self, partitions) -> None: ...

    def topic_keys(self, partitions) -> dict[int, int]:
        return {}

    def accept_gaps(self, gaps, topic_id) -> None: ...

    def positions(self, partitions) -> Offsets:
        return {p: _HELD[p] for p in partitions if p in _HELD}

    def write(self, batch: TickBatch) -> Written:
        todo = batch.after(_HELD)
        _ROWS.extend(todo.ticks.to_pylist())
        _HELD.update(todo.next_offsets)
        return Written(dict(_HELD), todo.ticks.num_rows, 0)

    def insert_missing(self, batch: TickBatch) -> Filled:
        return Filled(0, 0, dict(_HELD))

    def keys(self, partition, start, end):
        raise NotImplementedError

    def remove_duplicates(self, spans) -> int:
        return 0

    def describe(self, partitions) -> dict[str, object]:
        return {"rows": len(_ROWS)}

    keeps_days = False

    def horizon(self):
        return None

    def rows_on_day(self, day) -> int:
        return 0

    def expired_days(self, before) -> list:
        return []

    def repair_bars(self) -> int:
        return 0

    def bars_differing(self, since_us) -> int:
        return 0

    def drop_day(self, day) -> None: ...

    def summary(self, limit, bars_of=None) -> Summary:
        return Summary(self.name, len(_ROWS), None, [], "memory")

    def maintain(self, target_bytes, retention_hours) -> dict[str, object]:
        return {}

    def gaps(self) -> list:
        return []

    def close(self) -> None: ...

    def save_trade_state(self, partition, next_offset, state) -> None: ...

    def load_trade_state(self, partition, at_most):
        return None

    def duplicate_trades(self, partitions, since_us) -> dict[int, int]:
        return {}
