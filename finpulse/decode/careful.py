"""The careful path: one message at a time, in two steps: the wire format turns its bytes into a
value (wire.py), the feed readers (finpulse/feeds/) turn the value into trades; so every shape is
known and a message that yields no tick gets a reason."""

from __future__ import annotations

import pyarrow as pa

from finpulse import feeds
from finpulse.checks import broker_time_problem, ceiling_us, check, kafka_time_us, reject
from finpulse.decode.wire import Undecodable, Wire
from finpulse.errors import ServiceUnavailable
from finpulse.records import Decoded, Messages, Reject
from finpulse.schema import TICKS


class Careful:
    def __init__(self, wire: Wire, feed: feeds.Feed | None, strict: bool, extra: tuple[feeds.Feed, ...] = ()):
        self.wire, self.feed, self.strict = wire, feed, strict
        self.extra = extra  # shapes tried after the known ones (a field mapping)

    def decode(self, msgs: Messages, indexes) -> Decoded:
        rows: list[tuple] = []
        rejects: list[Reject] = []
        skipped = 0
        headers = msgs.headers
        for i in indexes:
            value, partition, offset, kts = msgs.values[i], msgs.partitions[i], msgs.offsets[i], msgs.timestamps[i]
            kafka_ms = kts if kts is not None and kts >= 0 else None
            mark = len(rows), len(rejects)
            try:
                skipped += self._one(value, partition, offset, kafka_ms, rows, rejects, headers and headers[i])
            except ServiceUnavailable:  # "not now": the caller retries the whole batch later
                raise
            except Exception as exc:  # a bug of ours must cost one message, never the worker
                del rows[mark[0] :], rejects[mark[1] :]
                rejects.append(
                    reject(
                        partition,
                        offset,
                        -1,
                        "unknown",
                        f"internal error while decoding: {type(exc).__name__}: {exc}",
                        value,
                        kafka_ms,
                    )
                )
        batch = _rows_to_batch(rows, rejects, msgs)
        feeds_read = batch.column(_FEED)
        return Decoded(batch.drop_columns([_FEED]), rejects, skipped, feeds_read)

    def _one(
        self,
        value: bytes | None,
        partition: int,
        offset: int,
        kafka_ms: int | None,
        rows: list[tuple],
        rejects: list[Reject],
        headers: list | None = None,
    ) -> int:
        """Decode one message into `rows` and `rejects`; return how many events it skipped."""
        strict = self.strict
        obj, feed_name, reason = self._read(value, headers)
        if reason is None:
            try:
                result = feeds.parse(obj, self.feed, self.extra)
            except feeds.Invalid as exc:
                feed_name, reason = exc.feed, str(exc)
        if reason is not None:
            rejects.append(reject(partition, offset, -1, feed_name, reason, value, kafka_ms))
            return 0
        feed_name = result.feed
        if not result.trades:  # a non-trade event sharing the topic
            if not strict:
                return 1
            rejects.append(
                reject(
                    partition,
                    offset,
                    -1,
                    feed_name,
                    f"not a trade event ({result.note}) and --strict is set",
                    value,
                    kafka_ms,
                )
            )
            return 0
        ceiling = ceiling_us(kafka_ms)
        kafka_us = kafka_time_us(kafka_ms)
        skipped = 0
        for tick_index, trade in enumerate(result.trades):
            if isinstance(trade, feeds.Trade):
                problem = check(trade, ceiling)
                broker_time = trade.ts_us is None
                ts_us = trade.ts_us if trade.ts_us is not None else -1
                if broker_time and problem is None:  # the Kafka record's time stands in
                    problem = broker_time_problem(kafka_ms)
                    ts_us = kafka_ms * 1000 if kafka_ms is not None else -1
                if problem is None:
                    rows.append(
                        (
                            trade.symbol,
                            trade.price,
                            trade.size,
                            ts_us // 1000,
                            ts_us,
                            trade.exchange or result.default_exchange,
                            trade.side,
                            trade.trade_id,
                            kafka_us,
                            broker_time,
                            partition,
                            offset,
                            tick_index,
                            feed_name,
                        )
                    )
                    continue
            elif isinstance(trade, feeds.Skip):  # a quote or status beside trades in one frame
                if not strict:
                    skipped += 1
                    continue
                problem = f"not a trade event ({trade.note}) and --strict is set"
            else:
                problem = str(trade)
            rejects.append(reject(partition, offset, tick_index, feed_name, problem, value, kafka_ms))
        return skipped

    def _read(self, value: bytes | None, headers: list | None = None) -> tuple[object, str, str | None]:
        """(value, feed name, None), or (None, feed name, why the message is unusable): step one,
        the wire format (wire.py). A wire that cannot decode now (a look-up that failed) raises
        ServiceUnavailable, which is never a reject."""
        try:
            return self.wire.values(value, headers), "unknown", None
        except Undecodable as exc:
            feed = (self.feed or feeds.detect(exc.parsed)) if exc.parsed is not None else None
            return None, feed.name if feed else "unknown", exc.reason


def _rows_to_batch(
    rows: list[tuple], rejects: list[Reject] | None = None, msgs: Messages | None = None
) -> pa.RecordBatch:
    """Row tuples (the schema's columns, then the feed's name) -> a record batch of TICKS plus the
    column _FEED. A row Arrow cannot take (a value `_check` let through by mistake) becomes a reject
    of its own instead of failing the whole batch."""
    if not rows:
        return pa.RecordBatch.from_pylist([], schema=_ROWS)
    try:
        # One conversion of the row tuples into a struct array: ~3x faster than transposing them in Python
        return pa.RecordBatch.from_struct_array(pa.array(rows, type=_TICK_ROW))
    except Exception:
        if rejects is None:
            raise
    good = []
    raw = {} if msgs is None else dict(zip(zip(msgs.partitions, msgs.offsets), zip(msgs.values, msgs.timestamps)))
    for row in rows:
        try:
            pa.array([row], type=_TICK_ROW)
            good.append(row)
        except Exception as exc:
            partition, offset, tick_index = row[-4:-1]
            value, kts = raw.get((partition, offset), (None, -1))
            rejects.append(
                reject(
                    partition,
                    offset,
                    tick_index,
                    "unknown",
                    f"internal error: the tick cannot be stored: {type(exc).__name__}: {exc}",
                    value,
                    kts if kts is not None and kts >= 0 else None,
                )
            )
    return _rows_to_batch(good)


_FEED = "__feed"  # the feed a row was read with: the trade window asks whether its ids are consecutive
_ROWS = pa.schema([*TICKS, pa.field(_FEED, pa.string(), nullable=False)])
_TICK_ROW = pa.struct(_ROWS)
