import pyarrow as pa

from finpulse.batch import Accumulator, TickBatch, reject_nbytes
from finpulse.decode import Decoder, Messages, Reject

TICK = b'{"symbol":"A","price":1,"size":1,"timestamp_ms":1700000000000}'


def _decoded(partition: int, offsets: list[int], values: list[bytes] | None = None):
    values = values or [TICK] * len(offsets)
    msgs = Messages(values, [partition] * len(offsets), offsets, [0] * len(offsets))
    return Decoder().decode(msgs), msgs


def _filled(*parts: tuple[int, list[int], list[bytes] | None]) -> Accumulator:
    acc = Accumulator()
    for p, offs, values in parts:
        d, m = _decoded(p, offs, values)
        acc.add(d, m.partitions, m.offsets)
    return acc


def _batch() -> TickBatch:
    acc = Accumulator()
    for p, offs in ((0, [0, 1, 2, 3]), (1, [10, 11])):
        d, m = _decoded(p, offs)
        acc.add(d, m.partitions, m.offsets)
    acc.rejects.append(Reject(0, 4, -1, "canonical", "bad", b"x", None))
    acc.next_offsets[0] = 5
    return acc.take()


def test_after_drops_exactly_what_a_sink_holds():
    b = _batch()
    todo = b.after({0: 2, 1: 12})
    assert todo.ticks.column("kafka_offset").to_pylist() == [2, 3]
    assert todo.next_offsets == {0: 5}
    assert [r.offset for r in todo.rejects] == [4]
    assert b.after({}).ticks.num_rows == 6
    assert b.after({0: 5, 1: 12}).empty


def test_after_a_position_below_every_row_keeps_the_rows_without_copying_them():
    b = _batch()
    todo = b.after({0: 0, 1: 10, 5: 3})  # what a sink holds before these rows (and elsewhere)
    assert todo.ticks is b.ticks
    assert todo.next_offsets == b.next_offsets and todo.rejects == b.rejects


def _span(partition: int, start: int, end: int) -> TickBatch:
    acc = Accumulator()
    d, m = _decoded(partition, list(range(start, end)))
    acc.add(d, m.partitions, m.offsets)
    return acc.take()


def test_merge_keeps_order_and_highest_offsets():
    a, b = _span(0, 0, 5), _span(1, 10, 12)
    m = TickBatch.merge([a, b, _span(0, 5, 8)])
    assert m.ticks.column("kafka_offset").to_pylist() == [0, 1, 2, 3, 4, 10, 11, 5, 6, 7]
    assert m.next_offsets == {0: 8, 1: 12}


def test_merge_cuts_a_re_read_overlap_instead_of_concatenating_it():
    """After a rebalance a worker may re-read offsets that a batch still queued in a lane covers."""
    first, again = _batch(), _span(0, 2, 9)  # first covers partition 0 up to 5 (4 is a reject)
    m = TickBatch.merge([first, again])
    keys = list(zip(m.ticks.column("kafka_partition").to_pylist(), m.ticks.column("kafka_offset").to_pylist()))
    assert len(keys) == len(set(keys))
    assert sorted(o for p, o in keys if p == 0) == [0, 1, 2, 3, 5, 6, 7, 8]
    assert [r.offset for r in m.rejects] == [4]
    assert m.next_offsets == {0: 9, 1: 12}
    assert TickBatch.merge([first, _span(0, 0, 3)]).ticks.num_rows == first.ticks.num_rows


def test_accumulator_take_resets_and_drop_forgets_revoked_partitions():
    acc = Accumulator()
    for p, offs in ((0, [0, 1]), (1, [5])):
        d, m = _decoded(p, offs)
        acc.add(d, m.partitions, m.offsets)
    acc.drop([0])
    assert acc.next_offsets == {1: 6}
    assert acc.ticks == 1
    batch = acc.take()
    assert batch.ticks.column("kafka_partition").to_pylist() == [1]
    assert acc.size == 0 and acc.next_offsets == {} and isinstance(batch.ticks, pa.Table)


def test_below_is_exactly_what_after_leaves_out():
    b = _batch()
    held = {0: 2, 1: 11}
    kept = b.after(held).ticks.column("kafka_offset").to_pylist()
    passed = b.below(held).column("kafka_offset").to_pylist()
    assert passed == [0, 1, 10] and kept == [2, 3, 11]
    assert b.below({}).num_rows == 0


def test_messages_read_again_within_one_batch_land_once():
    """A seek back while a batch was being read (an --allow-data-loss reset) delivers messages the
    accumulator already holds: the batch keeps each key once (twice, Delta stored both copies and
    PostgreSQL refused the batch for good)."""
    acc = Accumulator()
    for offs in ([0, 1, 2, 3, 4], [2, 3, 4, 5, 6]):
        d, m = _decoded(0, offs)
        acc.add(d, m.partitions, m.offsets)
    acc.rejects += [Reject(1, 7, -1, "canonical", "bad", b"x", None)] * 2
    batch = acc.take()
    assert batch.ticks.column("kafka_offset").to_pylist() == [0, 1, 2, 3, 4, 5, 6]
    assert [r.offset for r in batch.rejects] == [7]
    assert batch.next_offsets == {0: 7}
    d, m = _decoded(0, [7])
    acc.add(d, m.partitions, m.offsets)
    assert acc.take().ticks.column("kafka_offset").to_pylist() == [7]  # the next batch is read as usual


# ---------------------------------------------------------------------------- bytes in flight
def test_tick_batch_nbytes_is_arrow_rows_plus_raw_and_reason_of_rejects():
    acc = _filled((0, [0, 1, 2], None))
    ticks = acc.take().ticks
    rejects = (
        Reject(0, 3, -1, "canonical", "bad", b"x" * 1000, None),
        Reject(0, 4, -1, "unknown", "tombstone", None, None),
    )
    batch = TickBatch(ticks, rejects, {0: 5})
    assert ticks.nbytes > 0
    assert batch.nbytes == ticks.nbytes + (1000 + 3) + (0 + len("tombstone"))
    assert TickBatch(ticks.slice(0, 0), (), {}).nbytes == 0


def test_accumulator_counts_bytes_of_ticks_and_rejects_and_take_resets_them():
    big = b"{" + b" " * 50_000  # broken JSON: a reject carrying 50 kB of raw bytes
    acc = _filled((0, [0, 1], None), (1, [7, 8], [TICK, big]))
    assert acc.ticks == 3 and len(acc.rejects) == 1
    assert acc.nbytes > 50_000
    assert acc.nbytes == sum(p.nbytes for p in acc.pieces) + reject_nbytes(acc.rejects[0])
    batch = acc.take()
    assert batch.nbytes == acc_bytes_of(batch)
    assert acc.nbytes == 0 and acc.size == 0


def acc_bytes_of(batch: TickBatch) -> int:
    return batch.ticks.nbytes + sum(len(r.raw or b"") + len(r.reason) for r in batch.rejects)


def test_drop_forgets_the_bytes_of_revoked_partitions():
    big = b"\xff" * 20_000  # not UTF-8: rejected with its raw bytes
    acc = _filled((0, [0, 1], None), (1, [5], [big]))
    assert acc.nbytes > 20_000
    acc.drop([1])
    assert acc.rejects == [] and acc.ticks == 2
    assert acc.nbytes == sum(p.nbytes for p in acc.pieces) < 20_000
    acc.drop([0])
    assert acc.nbytes == 0
