"""The canonical tick in the schema registry's formats, for `finpulse produce --format`: its Avro,
Protobuf and JSON Schema, registered under the topic's value subject (`<topic>-value`, Confluent's
TopicNameStrategy) and framed by confluent-kafka's own serializers (a zero byte and the schema id
first; `header=True`: the id in the `__value_schema_id` header, as newer Confluent clients can).

The schemas say what the canonical JSON tick says (docs/feeds.md): symbol, price, size and
timestamp_ms, with exchange, side and trade_id optional; a trade id is text in both typed schemas
(an integer id lands as the same text either way). Protobuf's is proto2, so an unset optional field
stays absent rather than reading as a zero. Avro's is a flat record of primitive fields, the shape
ingest reads a batch at a time (decode/avro_batch.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from finpulse.config import Settings

FORMATS = ("json", "avro", "protobuf", "json-schema")

AVRO_TICK: dict[str, Any] = {
    "type": "record",
    "name": "Tick",
    "namespace": "finpulse",
    "doc": "One trade, as FinPulse's canonical tick.",
    "fields": [
        {"name": "symbol", "type": "string"},
        {"name": "price", "type": "double"},
        {"name": "size", "type": "double"},
        {"name": "timestamp_ms", "type": ["null", "long"], "default": None},
        {"name": "exchange", "type": ["null", "string"], "default": None},
        {"name": "side", "type": ["null", "string"], "default": None},
        {"name": "trade_id", "type": ["null", "string"], "default": None},
    ],
}

JSON_SCHEMA_TICK = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Tick",
    "type": "object",
    "properties": {
        "symbol": {"type": "string", "minLength": 1},
        "price": {"type": "number"},
        "size": {"type": "number"},
        "timestamp_ms": {"type": "integer"},
        "exchange": {"type": "string"},
        "side": {"type": "string"},
        "trade_id": {"type": ["integer", "string"]},
    },
    "required": ["symbol", "price", "size"],
}


def protobuf_tick() -> Any:
    """The message class of `finpulse.Tick` (proto2), built from a FileDescriptorProto."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="finpulse/tick.proto", package="finpulse", syntax="proto2")
    msg = fd.message_type.add(name="Tick")
    for number, (name, kind) in enumerate(
        (
            ("symbol", F.TYPE_STRING),
            ("price", F.TYPE_DOUBLE),
            ("size", F.TYPE_DOUBLE),
            ("timestamp_ms", F.TYPE_INT64),
            ("exchange", F.TYPE_STRING),
            ("side", F.TYPE_STRING),
            ("trade_id", F.TYPE_STRING),  # text, as the row keeps it: venue ids are numbers or UUIDs
        ),
        start=1,
    ):
        msg.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return GetMessageClass(pool.FindMessageTypeByName("finpulse.Tick"))


def subject(settings: Settings) -> str:
    return f"{settings.kafka_topic}-value"


def serializer(
    settings: Settings, fmt: str, header: bool = False, subject_name: str | None = None
) -> Callable[[dict], bytes | tuple]:
    """tick -> the framed value (or, `header=True`, (value, headers)), registering the schema of
    `fmt` under `subject_name` (default: the topic's value subject) on first use, through
    confluent-kafka's serializers. A subject holds one schema type: a topic of several formats
    names a subject per format."""
    from confluent_kafka.schema_registry import avro, header_schema_id_serializer, json_schema, protobuf
    from confluent_kafka.serialization import MessageField, SerializationContext

    from finpulse import registry

    client = registry.client(settings)
    conf: dict[str, Any] = {"auto.register.schemas": True}
    if subject_name:
        conf["subject.name.strategy"] = lambda _ctx, _record_name: subject_name
    if header:
        conf["schema.id.serializer"] = header_schema_id_serializer
    if fmt == "avro":
        ser: Any = avro.AvroSerializer(client, orjson.dumps(AVRO_TICK).decode(), conf=conf)
        make: Callable[[dict], Any] = avro_record
    elif fmt == "json-schema":
        ser = json_schema.JSONSerializer(orjson.dumps(JSON_SCHEMA_TICK).decode(), client, conf=conf)
        make = dict
    elif fmt == "protobuf":
        tick_class = protobuf_tick()
        ser = protobuf.ProtobufSerializer(tick_class, client, conf={**conf, "use.deprecated.format": False})

        def make(t: dict) -> Any:
            out = {k: v for k, v in t.items() if v is not None}
            if "trade_id" in out:
                out["trade_id"] = str(out["trade_id"])
            return tick_class(**out)
    else:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    where = registry.where(settings) or ""

    def encode(tick: dict) -> bytes | tuple:
        ctx = SerializationContext(settings.kafka_topic, MessageField.VALUE, [] if header else None)
        value = registry.call(where, f"registering the {fmt} tick schema", ser, make(tick), ctx)
        return (value, ctx.headers) if header else value

    return encode


_AVRO_FIELDS = tuple(f["name"] for f in AVRO_TICK["fields"])


def avro_record(t: dict) -> dict:
    """A tick as a record of AVRO_TICK (trade id as text: the schema's only non-null branch for it)."""
    out = {name: t.get(name) for name in _AVRO_FIELDS}
    if out["trade_id"] is not None:
        out["trade_id"] = str(out["trade_id"])
    return out


def encoded(
    settings: Settings, ticks_: Iterator[dict], fmt: str, header: bool = False, subject_name: str | None = None
) -> Iterator[tuple]:
    """(key, value[, headers]) of each tick in `fmt` (json: orjson, no registry)."""
    if fmt == "json":
        from finpulse.produce import encoded as json_encoded

        yield from json_encoded(ticks_)
        return
    encode = serializer(settings, fmt, header, subject_name)
    for t in ticks_:
        framed = encode(t)
        if header:
            value, headers = framed
            yield t["symbol"].encode(), value, headers
        else:
            yield t["symbol"].encode(), framed
