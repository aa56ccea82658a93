"""Arrow table -> PostgreSQL binary COPY bytes, a whole batch at a time, no Python loop per row.

Kept apart from the database so it can be tested on its own (the Formatter/Writer split of
psycopg). The trick that keeps it vectorised: the COPY column list puts every fixed-width NOT NULL
column first, so each row starts with a fixed-size block (built as one numpy structured array)
followed by the variable-length columns (text, and nullable fixed-width columns, whose NULL has no
value bytes), whose bytes are scattered into place with one index array.

Binary COPY layout: a 19-byte header, then per row an int16 field count and, per field, an
int32 byte length (-1 for NULL) and the value in network byte order; an int16 -1 ends the data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

# PostgreSQL's epoch is 2000-01-01 UTC; Arrow's is 1970-01-01.
_PG_EPOCH_US = 946_684_800_000_000

# Big-endian wire types of the fixed-width Arrow types.
_FIXED = {
    pa.float64(): ">f8",
    pa.int64(): ">i8",
    pa.int32(): ">i4",
    pa.bool_(): "u1",
    pa.timestamp("us", tz="UTC"): ">i8",
}


def _in_prefix(field: pa.Field) -> bool:
    """A column of the fixed-size block: fixed width and never NULL."""
    return field.type in _FIXED and not field.nullable


def copy_columns(schema: pa.Schema) -> list[str]:
    """The column order the encoder writes: fixed-width NOT NULL columns first, then the others
    (text, nullable fixed-width), each group in schema order."""
    unknown = [f"{f.name}: {f.type}" for f in schema if f.type not in _FIXED and f.type != pa.string()]
    if unknown:
        raise TypeError(f"no binary COPY encoding for {unknown}")
    return [f.name for f in schema if _in_prefix(f)] + [f.name for f in schema if not _in_prefix(f)]


# Rows encoded at a time by `chunks`: the encoder's temporaries are a few times the size of what
# it encodes: encoding a 250k-row write at once raised a worker's peak RSS by about 55 MB.
CHUNK_ROWS = 32_768


def chunks(table: pa.Table | pa.RecordBatch, rows: int = CHUNK_ROWS) -> Iterator[bytes]:
    """The COPY data of every row of `table`, in pieces of `rows` rows (header first, trailer
    last), for `Copy.write` one after the other: the same bytes as `encode`, in bounded memory."""
    yield HEADER
    for start in range(0, table.num_rows, rows):
        yield encode(table.slice(start, rows), with_header=False)
    yield TRAILER


def encode(table: pa.Table | pa.RecordBatch, with_header: bool = True) -> bytes:
    """Encode every row of `table` (columns in `copy_columns` order) as binary COPY data."""
    columns = copy_columns(table.schema)
    n = table.num_rows
    fixed_names = [c for c in columns if _in_prefix(table.schema.field(c))]
    text_names = columns[len(fixed_names) :]
    texts = [
        _text_parts(table.column(name)) if table.schema.field(name).type == pa.string() else _fixed_parts(table, name)
        for name in text_names
    ]

    # The fixed-size part of a row: field count, (length, value) per fixed column, then the
    # length word of every text column. In the output those length words sit in front of their
    # text, but read row by row they come in this same order, which is all the interleave needs.
    layout = [("nfields", ">i2")]
    for name in fixed_names:
        layout += [(f"{name}__len", ">i4"), (name, _FIXED[table.schema.field(name).type])]
    layout += [(f"{name}__len", ">i4") for name in text_names]
    prefix = np.empty(n, dtype=np.dtype(layout))
    prefix["nfields"] = len(columns)
    for name in fixed_names:
        col = table.column(name)
        if col.null_count:
            raise ValueError(f"column {name} has NULLs; only text columns may be NULL")
        values = _numpy(col)
        if pa.types.is_timestamp(col.type):
            values = values.astype(np.int64) - _PG_EPOCH_US
        prefix[f"{name}__len"] = prefix.dtype[name].itemsize
        prefix[name] = values
    for name, (lengths, _, _) in zip(text_names, texts):
        prefix[f"{name}__len"] = lengths

    # Each row is: [fixed + 1st length][1st text][2nd length][2nd text]...; split it into
    # segments that alternate between the prefix stream and the text stream.
    head = prefix.dtype.itemsize - 4 * len(text_names)
    seg_lens = np.empty((n, 2 * max(len(texts), 1)), dtype=np.int64)
    seg_lens[:, 0::2] = 4
    seg_lens[:, 0] = head + (4 if texts else 0)
    seg_lens[:, 1::2] = 0
    for i, (lengths, _, _) in enumerate(texts):
        seg_lens[:, 2 * i + 1] = np.maximum(lengths, 0)
    is_prefix = np.tile(np.array([True, False]), seg_lens.shape[1] // 2 * n)
    from_prefix = np.repeat(is_prefix, seg_lens.ravel())
    body = np.empty(from_prefix.size, dtype=np.uint8)
    body[from_prefix] = prefix.view(np.uint8)
    body[~from_prefix] = _interleave_rows([(np.maximum(lengths, 0), data) for lengths, data, _ in texts])

    if not with_header:
        return body.tobytes()
    return HEADER + body.tobytes() + TRAILER


def _interleave_rows(columns: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Bytes of several text columns, row by row: r0c0 r0c1 ... r1c0 r1c1 ..."""
    if not columns:
        return np.empty(0, dtype=np.uint8)
    if len(columns) == 1:
        return columns[0][1]
    lengths = np.stack([lens for lens, _ in columns], axis=1)
    which = np.repeat(np.tile(np.arange(len(columns), dtype=np.uint8), len(lengths)), lengths.ravel())
    out = np.empty(which.size, dtype=np.uint8)
    for i, (_, data) in enumerate(columns):
        out[which == i] = data
    return out


def _numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_boolean(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.uint8)
    return col.to_numpy(zero_copy_only=False)


def _fixed_parts(table: pa.Table | pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A nullable fixed-width column laid out as a variable one: (byte length per row, -1 for NULL;
    the big-endian values of the non-NULL rows; unused)."""
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    wire = np.dtype(_FIXED[col.type])
    valid = ~col.is_null().to_numpy(zero_copy_only=False) if col.null_count else np.ones(len(col), dtype=bool)
    values = _numpy(col.fill_null(0) if col.null_count else col)
    if pa.types.is_timestamp(col.type):
        values = values.astype(np.int64) - _PG_EPOCH_US
    lengths = np.where(valid, wire.itemsize, -1).astype(np.int64)
    data = values[valid].astype(wire).view(np.uint8)
    return lengths, data, np.empty(0, dtype=np.int64)


def _text_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(byte length per row or -1 for NULL, the UTF-8 bytes of all rows, each row's first byte index)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.type != pa.string():
        col = col.cast(pa.string())
    n = len(col)
    _, offsets_buf, data_buf = col.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[col.offset : col.offset + n + 1].astype(np.int64)
    lengths = np.diff(offsets)
    if col.null_count:
        nulls = col.is_null().to_numpy(zero_copy_only=False)
        if lengths[nulls].any():  # Arrow allows bytes behind a NULL slot; drop them first
            return _text_parts(pa.array(col.to_pylist(), type=pa.string()))
        lengths[nulls] = -1
    if data_buf is None or offsets[-1] == offsets[0]:
        data = np.empty(0, dtype=np.uint8)
    else:
        data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return lengths, data, offsets[:-1]
