"""Step one of decoding for topics whose messages come through a schema registry: Confluent-framed
Avro, Protobuf and JSON Schema, detected per message, beside plain JSON on the same topic.

    framed by the payload   0x00, a 4-byte big-endian schema id, the payload (Protobuf: its
                            message indexes first)
    framed by a header      `__value_schema_id`: 0x01 and the schema's 16-byte guid; the value is
                            the payload alone (newer Confluent clients)
    anything else           plain JSON (wire.JsonWire)

A schema is fetched once per id through confluent-kafka's SchemaRegistryClient (finpulse/
registry.py) and its reader built once: fastavro for Avro, protobuf's descriptor pool for
Protobuf (the registry's serialized FileDescriptorProto), orjson and jsonschema for JSON Schema.
A record becomes a value for the feed readers: as it is (its fields may already be the canonical
tick's), or renamed by the field mapping of its subject (feeds/mapped.py).

Failures take the two channels of wire.py: a registry that cannot answer now is ServiceUnavailable
(held back, retried); an id it does not know, a payload its schema cannot read, a mapped field the
schema does not have, are Undecodable, with the schema id in the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from finpulse import registry
from finpulse.config import Settings
from finpulse.decode.avro_batch import BatchReader, batch_reader
from finpulse.decode.wire import JsonWire, Undecodable
from finpulse.errors import AccessRefused, ServiceUnavailable
from finpulse.feeds.mapped import Fields, Mapping
from finpulse.feeds.model import Invalid
from finpulse.records import Messages

log = logging.getLogger(__name__)

HEADER = "__value_schema_id"
# An id the registry said it does not know is asked again after this long (it may be registered
# late); meanwhile its messages are rejects without a round trip each.
UNKNOWN_TTL_S = 30.0
MAX_UNKNOWN = 10_000  # such ids remembered at once (bounded memory on a topic of random frames)


@dataclass
class Reader:
    """How to read the payloads of one schema."""

    kind: str  # AVRO, PROTOBUF or JSON
    what: str  # "schema 17 (prices-value v3)", for reasons
    read: Callable[[bytes, bytes | None], Any]  # payload, framing prefix -> record
    fields: Fields | None  # the mapping for its subject, if any
    batch: BatchReader | None = None  # Avro of a flat schema: a batch's payloads read at once


class RegistryWire:
    name = "registry"

    def __init__(self, settings: Settings, mapping: Mapping | None = None, max_message_bytes: int = 1 << 20):
        self.settings, self.mapping = settings, mapping
        self.json = JsonWire(max_message_bytes)
        self.max_message_bytes = max_message_bytes
        self.where = registry.where(settings) or "(none configured)"
        self._client = None
        self.readers: dict[tuple[str, object], Reader] = {}
        self.unknown: dict[tuple[str, object], tuple[float, str]] = {}

    @staticmethod
    def plain(msgs: Messages) -> bool:
        """No message of the batch is registry-framed: JSON's fast path may take it. Headers of
        other names (tracing, a producer's own) do not count."""
        return not _any_schema_header(msgs) and not any(v is not None and v[:1] == b"\x00" for v in msgs.values)

    def records(self, msgs: Messages) -> list | dict | None:
        """The records of a batch whose every message is framed by its payload with an Avro or
        Protobuf schema its subject maps to no field mapping, each read once: as columns by field
        name when one flat Avro schema wrote them all (avro_batch.py), else one dict per message;
        None otherwise (a plain or header-framed message, an unknown id, a payload that does not
        read: the careful path decides each message). A registry that cannot answer raises
        ServiceUnavailable."""
        if _any_schema_header(msgs):
            return None
        columns = self._columns(msgs)
        if columns is not None:
            return columns
        out = []
        limit, readers = self.max_message_bytes, self.readers
        last_id, reader = -1, None
        for value in msgs.values:
            if value is None or len(value) < 5 or value[0] != 0 or len(value) > limit:
                return None
            sid = int.from_bytes(value[1:5], "big")
            if sid != last_id:
                reader = readers.get(("id", sid))
                if reader is None:
                    try:
                        reader = self._reader(("id", sid))
                    except Undecodable:
                        return None
                if reader.kind == "JSON" or reader.fields is not None:
                    return None
                last_id = sid
            try:
                out.append(reader.read(value[5:], None))  # type: ignore[union-attr]
            except Exception:
                return None
        return out

    def _columns(self, msgs: Messages) -> dict | None:
        """The batch read at once, when one flat Avro schema (no mapping) framed every message."""
        values, limit = msgs.values, self.max_message_bytes
        first = values[0] if values else None
        if first is None or len(first) < 5 or first[0] != 0:
            return None
        prefix = first[:5]
        reader = self.readers.get(("id", int.from_bytes(prefix[1:5], "big")))
        if reader is None or reader.batch is None or reader.fields is not None:
            return None  # not read before (the per-message loop fetches it), or not so simple
        if not all(v is not None and v[:5] == prefix and len(v) <= limit for v in values):
            return None
        return reader.batch.read([v[5:] for v in values if v is not None])

    def values(self, value: bytes | None, headers: list | None = None) -> object:
        guid = _header(headers)
        if value is None or (guid is None and value[:1] != b"\x00"):
            return self.json.values(value)
        if len(value) > self.max_message_bytes:
            return self.json.values(value)  # the size limit's reject
        if guid is None:
            if len(value) < 5:
                raise Undecodable(
                    f"registry framing: {len(value)} bytes, fewer than a zero byte and a 4-byte schema id"
                )
            key: tuple[str, object] = ("id", int.from_bytes(value[1:5], "big"))
        else:
            key = ("guid", guid)
        reader = self._reader(key)
        try:
            header = _header_bytes(headers) if guid is not None else None
            record = reader.read(value if guid is not None else value[5:], header)
        except Undecodable as exc:
            raise Undecodable(f"{reader.what}: {exc.reason}") from None
        except Exception as exc:  # the payload is not what its schema says
            raise Undecodable(f"payload does not match {reader.what}: {type(exc).__name__}: {str(exc)[:200]}") from None
        if reader.fields is None:
            return record
        missing = reader.fields.missing(record) if isinstance(record, dict) else []
        if missing:
            name, role = missing[0]
            raise Undecodable(f"{reader.what} has no field {name!r}, which the mapping reads as {role}")
        try:
            return reader.fields.canonical(record)
        except Invalid as exc:
            raise Undecodable(f"{reader.what}: {exc}") from None

    # ------------------------------------------------------------------ schemas
    @property
    def client(self):
        if self._client is None:
            self._client = registry.client(self.settings)
        return self._client

    def _reader(self, key: tuple[str, object]) -> Reader:
        found = self.readers.get(key)
        if found is not None:
            return found
        gone = self.unknown.get(key)
        if gone is not None and time.monotonic() - gone[0] < UNKNOWN_TTL_S:
            raise Undecodable(gone[1])
        what = f"schema id {key[1]}" if key[0] == "id" else f"schema guid {key[1]}"
        try:
            reader = self._build(key, what)
        except AccessRefused as exc:
            # Mid-run, a refused sign-in (a rotated password, a revoked key) is an outage to report
            # and wait out, never a reason to reject the message: start-up's check (registry.check)
            # is where a wrong password stops the command.
            raise ServiceUnavailable(str(exc)) from None
        except registry.Unknown:
            reason = f"{what} is unknown to the schema registry at {self.where}"
            if len(self.unknown) >= MAX_UNKNOWN:  # a hostile topic of random ids: forget the oldest
                del self.unknown[next(iter(self.unknown))]
            self.unknown[key] = (time.monotonic(), reason)
            raise Undecodable(reason) from None
        self.readers[key] = reader
        return reader

    def _build(self, key: tuple[str, object], what: str) -> Reader:
        sr, where = self.client, self.where
        fetch = sr.get_schema if key[0] == "id" else sr.get_schema_by_guid
        schema = registry.call(where, f"fetching {what}", fetch, key[1])
        kind = schema.schema_type or "AVRO"
        subject, version = None, None
        if key[0] == "id":
            versions = registry.call(where, f"finding the subject of {what}", sr.get_schema_versions, key[1])
            if versions:
                # One schema may be registered under several subjects (the same id in each): the
                # one a mapping names wins, so a subject's mapping holds whoever else uses its schema.
                mapped = self.mapping.subjects if self.mapping is not None else {}
                topic = self.settings.kafka_topic
                chosen = next(
                    (v for v in versions if v.subject in mapped),
                    next((v for v in versions if v.subject.startswith(topic)), versions[0]),
                )
                subject, version = chosen.subject, chosen.version
        named = f"{what} ({subject} v{version})" if subject else what
        batch = None
        if kind == "AVRO":
            read = _avro(schema.schema_str)
            batch = batch_reader(schema.schema_str) if self.settings.avro_batch_decode else None
        elif kind == "PROTOBUF":
            serialized = registry.call(where, f"fetching {what}", fetch, key[1], fmt="serialized")
            read = _protobuf(serialized.schema_str)
        elif kind == "JSON":
            read = _json_schema(schema.schema_str)
        else:
            raise Undecodable(f"{named} is of type {kind}, which FinPulse does not read")
        fields = self.mapping.for_subject(subject) if self.mapping is not None else None
        log.info("reading %s (%s) from the schema registry at %s", named, kind, where)
        return Reader(kind, named, read, fields, batch)


def _any_schema_header(msgs: Messages) -> bool:
    return msgs.headers is not None and any(_header_bytes(h) is not None for h in msgs.headers)


def _header(headers: list | None) -> str | None:
    raw = _header_bytes(headers)
    if raw is None or len(raw) < 17 or raw[0] != 1:
        return None
    import uuid

    return str(uuid.UUID(bytes=bytes(raw[1:17])))


def _header_bytes(headers: list | None) -> bytes | None:
    if not headers:
        return None
    for name, value in headers:
        if name == HEADER and value is not None:
            return bytes(value)
    return None


def _avro(schema_str: str) -> Callable[[bytes, bytes | None], Any]:
    import fastavro

    parsed = fastavro.parse_schema(orjson.loads(schema_str))
    reader = fastavro.schemaless_reader

    def read(payload: bytes, _header: bytes | None) -> Any:
        stream = io.BytesIO(payload)
        record = reader(stream, parsed, None)
        left = len(payload) - stream.tell()
        if left:
            raise Undecodable(f"{left} bytes after the record its schema describes")
        return record

    return read


def _protobuf(serialized: str) -> Callable[[bytes, bytes | None], Any]:
    """A reader of the messages of a FileDescriptorProto (base64, the registry's serialized form)."""
    from confluent_kafka.schema_registry.common.protobuf import _init_pool
    from google.protobuf import descriptor_pb2
    from google.protobuf.descriptor_pool import DescriptorPool
    from google.protobuf.message_factory import GetMessageClass

    fd_proto = descriptor_pb2.FileDescriptorProto()
    fd_proto.ParseFromString(base64.standard_b64decode(serialized.encode("ascii")))
    pool = DescriptorPool()
    _init_pool(pool)  # the well-known types (Timestamp, wrappers) it may use
    pool.Add(fd_proto)
    file = pool.FindFileByName(fd_proto.name)
    classes: dict[tuple[int, ...], Any] = {}

    def message_class(indexes: tuple[int, ...]):
        if indexes not in classes:
            types = file.message_types_by_name
            desc = list(types.values())[indexes[0]]
            for i in indexes[1:]:
                desc = desc.nested_types[i]
            classes[indexes] = GetMessageClass(desc)
        return classes[indexes]

    def read(payload: bytes, header: bytes | None) -> Any:
        stream = io.BytesIO(header[17:] if header is not None else payload)
        indexes = _indexes(stream)
        body = payload if header is not None else payload[stream.tell() :]
        return _message_dict(message_class(indexes).FromString(body))

    return read


_WRAPPERS = {
    "google.protobuf." + n
    for n in ("DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value", "UInt32Value")
    + ("BoolValue", "StringValue", "BytesValue")
}


def _message_dict(msg: Any) -> dict:
    """A Protobuf message as the feed readers' record: the fields it has (presence kept, so an unset
    optional field is absent, not a zero), int64 as int (not text, as JSON mapping has it), a
    Timestamp as an aware datetime, a wrapper as its value, an enum as its name."""
    desc = msg.DESCRIPTOR
    flat = _FLAT.get(desc)
    if flat is None:  # scalars only (no message, enum or repeated field): taken as they are
        flat = _FLAT[desc] = all(
            f.message_type is None and f.enum_type is None and not f.is_repeated for f in desc.fields
        )
    if flat:
        return {fd.name: value for fd, value in msg.ListFields()}
    return {fd.name: _field_value(fd, value) for fd, value in msg.ListFields()}


_FLAT: dict[Any, bool] = {}


def _field_value(fd: Any, value: Any) -> Any:
    if fd.is_repeated:
        return [_one_value(fd, v) for v in value]
    return _one_value(fd, value)


def _one_value(fd: Any, value: Any) -> Any:
    if fd.message_type is not None:
        name = fd.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return value.ToDatetime(tzinfo=dt.UTC)
        if name in _WRAPPERS:
            return value.value
        return _message_dict(value)
    if fd.enum_type is not None:
        found = fd.enum_type.values_by_number.get(value)
        return found.name if found is not None else value
    return value


def _indexes(stream: io.BytesIO) -> tuple[int, ...]:
    """Confluent's Protobuf message indexes: a zigzag varint count, then the indexes (0 alone: the
    first message), read with confluent-kafka's own varint reader."""
    from confluent_kafka.schema_registry.common.serde import SchemaId

    found = SchemaId._read_index_array(stream, zigzag=True)
    return tuple(found) if found else (0,)


def _json_schema(schema_str: str) -> Callable[[bytes, bytes | None], Any]:
    import jsonschema

    schema = orjson.loads(schema_str)
    validator = jsonschema.validators.validator_for(schema)(schema)

    def read(payload: bytes, _header: bytes | None) -> Any:
        record = orjson.loads(payload)
        error = jsonschema.exceptions.best_match(validator.iter_errors(record))
        if error is not None:
            where = "/".join(map(str, error.absolute_path)) or "the record"
            raise Undecodable(f"JSON schema refuses {where}: {error.message[:200]}")
        return record

    return read


def framed_id(value: bytes | None, headers: list | None) -> object | None:
    """The schema id (int) or guid (text) a message is framed with; None for plain JSON."""
    guid = _header(headers)
    if guid is not None:
        return guid
    if value is not None and len(value) >= 5 and value[:1] == b"\x00":
        return int.from_bytes(value[1:5], "big")
    return None


def _guid_subject(sr, where: str, guid: str, subjects: list[str]):
    """The registered version (subject, version) of the schema with `guid` among `subjects`, this
    topic's (the registry answers a guid with the schema alone); None when none holds it."""
    try:
        schema = registry.call(where, f"reading schema guid {guid}", sr.get_schema_by_guid, guid)
    except registry.Unknown:
        return None
    for subject in subjects:
        try:
            return registry.call(where, f"finding schema guid {guid} in {subject}", sr.lookup_schema, subject, schema)
        except registry.Unknown:
            continue
    return None


def in_use(settings: Settings, last: dict[int, tuple[bytes | None, list | None]]) -> dict[str, object]:
    """For `status`: the registry's place, and per partition the subject, version and id its newest
    message was written with (`last`: partition -> that message's value and headers); the latest
    version of each of those subjects and of `<topic>-value`. Raises FinPulse's errors."""
    sr, where = registry.client(settings), registry.where(settings) or ""
    partitions: dict[str, str | None] = {}
    subjects: dict[str, dict[str, object]] = {}
    topic_subjects: list[str] | None = None
    for partition, (value, headers) in sorted(last.items()):
        sid = framed_id(value, headers)
        if sid is None:
            partitions[str(partition)] = "plain JSON" if value is not None else None
            continue
        if isinstance(sid, str):
            if topic_subjects is None:
                topic_subjects = sorted(
                    s
                    for s in registry.call(where, "listing subjects", sr.get_subjects)
                    if s.startswith(settings.kafka_topic)
                )
            found = _guid_subject(sr, where, sid, topic_subjects)
            if found is not None:
                subjects.setdefault(found.subject or "", {})
            partitions[str(partition)] = (
                f"{found.subject} v{found.version} (guid {sid})" if found is not None else f"schema guid {sid}"
            )
            continue
        try:
            versions = registry.call(where, f"finding the subject of schema id {sid}", sr.get_schema_versions, sid)
        except registry.Unknown:
            partitions[str(partition)] = f"schema id {sid} (unknown to the registry)"
            continue
        if versions:  # the same schema may serve several subjects: this topic's first
            ours = next((v for v in versions if v.subject.startswith(settings.kafka_topic)), versions[0])
            subjects.setdefault(ours.subject, {})
            partitions[str(partition)] = f"{ours.subject} v{ours.version} (id {sid})"
    names = set(subjects)
    try:
        names |= {
            s for s in registry.call(where, "listing subjects", sr.get_subjects) if s == f"{settings.kafka_topic}-value"
        }
    except registry.Unknown:
        pass
    for name in sorted(names):
        try:
            latest = registry.call(where, f"reading subject {name}", sr.get_latest_version, name)
        except registry.Unknown:
            continue
        subjects[name] = {
            "latest_version": latest.version,
            "id": latest.schema_id,
            "type": latest.schema.schema_type or "AVRO",
        }
    return {"url": where, "subjects": subjects, "in_use": partitions}
