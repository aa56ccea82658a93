"""Avro payloads of one schema read a batch at once, column by column.

fastavro reads one message at a time into a dict (about 130k ticks/s here). For a flat record of
primitive fields, the common tick schema, polars reads the same bytes as one block of an Avro
object container file, in Rust, straight into columns (about 1M ticks/s): the container's header
names the schema, the block is the payloads one after another.

Read that way, message boundaries are not polars' business: it decodes records back to back and
ignores bytes left over at the end. Two checks on the result prove that row i is exactly payload
i, or the batch goes the per-message way (registry.py), which rejects a bad message precisely:

  * lengths: each row's encoded size, computed from its values (a varint's size from its value,
    a string's from its byte length), equals its payload's length. Sizes computed so are the least
    any encoding of those values takes, and polars fails a block it would read past the end of,
    so equal totals mean every row was read from its own payload and nothing else;
  * union branches: polars takes any branch index of a [null, T] union other than null's as T;
    the byte at each union's offset (known once the sizes are) must be the branch's own index.

Only flat records qualify: fields of type string, double, long or int, each perhaps in a union
with null, no logical types (those stay with fastavro, which applies them).
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

PRIMITIVES = {"string": pa.string(), "double": pa.float64(), "long": pa.int64(), "int": pa.int64()}
PANIC_PAUSE_S = 10.0
_SYNC = b"finpulse-avro-16"  # the container's sync marker: any 16 bytes
_VARINT_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


class BatchReader:
    """Reads the payloads of one Avro schema (see the module's docstring); `read` gives the
    columns by field name, or None when the batch must go message by message."""

    def __init__(self, schema_str: str, fields: list[tuple[str, str, int | None]]):
        self.fields = fields  # (name, primitive type, branch index of null in its union or None)
        self.header = b"Obj\x01" + _avro_map({b"avro.schema": schema_str.encode(), b"avro.codec": b"null"}) + _SYNC
        self.types = {name: PRIMITIVES[kind] for name, kind, _ in fields}
        self.quiet_until = 0.0  # monotonic time before which batches go message by message

    def read(self, payloads: list[bytes]) -> dict[str, pa.Array] | None:
        n = len(payloads)
        if not n:
            return None
        body = b"".join(payloads)
        container = b"".join((self.header, _zigzag_varint(n), _zigzag_varint(len(body)), body, _SYNC))
        if time.monotonic() < self.quiet_until:
            return None
        try:
            import polars

            table = polars.read_avro(io.BytesIO(container)).to_arrow()
        except Exception:  # bytes its schema cannot read: each message is told apart the slow way
            return None
        except BaseException as exc:
            # Some corrupt payloads (a string longer than what is left) make polars panic rather
            # than fail, and each panic prints its message on stderr: after one, batches go the
            # per-message way for a while, so a hostile topic cannot fill stderr.
            if type(exc).__name__ != "PanicException":
                raise
            self.quiet_until = time.monotonic() + PANIC_PAUSE_S
            return None
        if table.num_rows != n:
            return None
        columns = {name: table.column(name).combine_chunks() for name, _, _ in self.fields}
        sizes = np.zeros(n, dtype=np.int64)
        unions: list[tuple[np.ndarray, np.ndarray]] = []  # (offset within the row, expected byte)
        for name, kind, null_branch in self.fields:
            column = columns[name]
            valid = _valid(column)
            value_size = _sizes(column, kind)
            if null_branch is None:
                sizes += value_size
                continue
            # the branch index, a zigzag varint of 0 or 1: one byte, 0x00 or 0x02
            branch = np.where(valid, 1 - null_branch, null_branch).astype(np.uint8) * 2
            unions.append((sizes.copy(), branch))
            sizes += 1 + np.where(valid, value_size, 0)
        lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
        if not np.array_equal(sizes, lengths):
            return None
        if unions:
            raw = np.frombuffer(body, dtype=np.uint8)
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            for offset, branch in unions:
                if not np.array_equal(raw[starts + offset], branch):
                    return None
        return {name: columns[name].cast(self.types[name]) for name, _, _ in self.fields}


def batch_reader(schema_str: str) -> BatchReader | None:
    """A BatchReader for a flat record schema of primitive fields, None for any other (or when
    polars is not installed, or cannot read the schema)."""
    # One thread in polars' pool: a worker process reads one partition at a time, and the box's
    # cores belong to the other workers (read before polars is first imported).
    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    try:
        import polars
    except ImportError:
        return None
    schema = orjson.loads(schema_str)
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields: list[tuple[str, str, int | None]] = []
    for field in schema.get("fields", []):
        kind, null_branch = field.get("type"), None
        if isinstance(kind, list):
            if len(kind) != 2 or "null" not in kind:
                return None
            null_branch = kind.index("null")
            kind = kind[1 - null_branch]
        if not isinstance(kind, str) or kind not in PRIMITIVES:  # logical and named types: fastavro's
            return None
        fields.append((field["name"], kind, null_branch))
    if not fields:
        return None
    reader = BatchReader(schema_str, fields)
    try:  # a container of no blocks: polars reads the schema or says it cannot
        polars.read_avro(io.BytesIO(reader.header))
    except Exception:
        return None
    return reader


def _valid(column: pa.Array) -> np.ndarray:
    if column.null_count == 0:
        return np.ones(len(column), dtype=bool)
    return pc.is_valid(column).to_numpy(zero_copy_only=False)


def _sizes(column: pa.Array, kind: str) -> np.ndarray:
    """The fewest bytes each value's Avro encoding takes (nulls: whatever, masked by the caller)."""
    if kind == "double":
        return np.full(len(column), 8, dtype=np.int64)
    if kind == "string":
        lengths = pc.fill_null(pc.binary_length(column), 0).to_numpy().astype(np.int64)
        return _varint_sizes(lengths) + lengths
    values = pc.fill_null(column.cast(pa.int64()), 0).to_numpy()
    return _varint_sizes(values)


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of the zigzag varint of each int64."""
    v = values.astype(np.int64)
    zigzag = (v.view(np.uint64) << np.uint64(1)) ^ (v >> np.int64(63)).view(np.uint64)
    return 1 + (zigzag[:, None] >= _VARINT_STEPS).sum(axis=1)


def _zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _avro_map(entries: dict[bytes, bytes]) -> bytes:
    """An Avro map of bytes (the container header's metadata): one block, then the empty block."""
    out = [_zigzag_varint(len(entries))]
    for key, value in entries.items():
        out += [_zigzag_varint(len(key)), key, _zigzag_varint(len(value)), value]
    return b"".join(out) + b"\x00"
