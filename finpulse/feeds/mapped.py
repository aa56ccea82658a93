"""A field mapping: records of no known feed shape, JSON or registry-framed (Avro, Protobuf, JSON
Schema), read by naming which field is what. It renames a record into the canonical tick and the
canonical reader does the rest, so a mapped trade obeys every rule a canonical one does.

The mapping is a small TOML file (FINPULSE_MAPPING, `--mapping FILE`), docs/feeds.md#field-mappings:

    symbol = "ticker"        # required: the record's field for each of FinPulse's
    price = "px"
    size = "qty"
    time = "ts"              # optional: absent, the Kafka record's time stands in
    time_unit = "us"         # s, ms (default), us, ns or auto; ISO text, Avro timestamp-* and
                             # Protobuf Timestamp values carry their own
    exchange = "venue"       # optional, and exchange_default for records without one
    side = "aggressor"       # optional
    trade_id = "tid"         # optional

    [subjects."fx-ticks-value"]   # registry records of that subject map this way instead
    symbol = "pair"
    ...
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finpulse.errors import ConfigError
from finpulse.feeds import canonical
from finpulse.feeds.fields import epoch_us, quote
from finpulse.feeds.model import Feed, Invalid, Parsed

NAME = "mapped"
ROLES = ("symbol", "price", "size", "time", "exchange", "side", "trade_id")
REQUIRED = ("symbol", "price", "size")
UNITS = ("s", "ms", "us", "ns", "auto")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Fields:
    """One mapping: role -> the record's field name."""

    names: dict[str, str]
    time_unit: str = "ms"
    exchange_default: str | None = None

    def missing(self, record: dict) -> list[tuple[str, str]]:
        """(field, role) of the required fields `record` lacks."""
        need = [r for r in REQUIRED if r in self.names] + (["time"] if "time" in self.names else [])
        return [(self.names[r], r) for r in need if self.names[r] not in record]

    def canonical(self, record: Any) -> dict:
        """`record` renamed into a canonical tick (Invalid when it is no record of this mapping)."""
        if not isinstance(record, dict):
            raise Invalid(f"not a record the mapping reads: {type(record).__name__}", NAME)
        out: dict[str, Any] = {}
        for role, name in self.names.items():
            if name not in record:
                continue
            value = record[name]
            if role == "time":
                if value is None:
                    continue
                out["timestamp_ms"] = self._ms(value, name)
            else:
                out[role] = value
        if "exchange" not in out or out["exchange"] in (None, ""):
            if self.exchange_default:
                out["exchange"] = self.exchange_default
        for role in REQUIRED:
            if role not in out:
                raise Invalid(f"missing {self.names[role]} (mapped as {role})", NAME)
        return out

    def _ms(self, value: Any, name: str) -> float:
        """The trade time in epoch ms (a float keeps the µs), whatever form it came in."""
        if isinstance(value, dt.datetime):  # Avro timestamp-millis/micros, as fastavro gives them
            moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            delta = moment - _EPOCH
            return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds) / 1000
        if isinstance(value, dict) and set(value) <= {"seconds", "nanos"}:  # a Protobuf Timestamp as a dict
            return int(value.get("seconds", 0)) * 1000 + int(value.get("nanos", 0)) / 1_000_000
        return epoch_us(value, self.time_unit, NAME, name) / 1000


@dataclass(frozen=True)
class Mapping:
    """The default mapping and those of registry subjects."""

    default: Fields | None
    subjects: dict[str, Fields] = field(default_factory=dict)
    path: str = ""

    def for_subject(self, subject: str | None) -> Fields | None:
        return self.subjects.get(subject or "", self.default)

    def feed(self) -> Feed | None:
        """The mapping as a feed shape of JSON records (detected after every known shape)."""
        fields = self.default
        if fields is None:
            return None

        def matches(obj: Any) -> bool:
            return isinstance(obj, dict) and fields.names["symbol"] in obj and fields.names["price"] in obj

        def parse(obj: Any) -> Parsed:
            parsed = canonical.parse(fields.canonical(obj))
            return Parsed(NAME, parsed.trades, parsed.default_exchange, parsed.note)

        return Feed(NAME, None, matches, parse)


def load(path: Path) -> Mapping:
    """The mapping file at `path`; ConfigError with what is wrong, naming the file."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"FINPULSE_MAPPING / --mapping: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"FINPULSE_MAPPING / --mapping: {path} is not TOML: {exc}") from None
    subjects = doc.pop("subjects", {})
    if not isinstance(subjects, dict):
        raise ConfigError(f"{path}: [subjects] must be a table of subject names")
    default = _fields(doc, f"{path}") if doc else None
    per = {name: _fields(table, f"{path} [subjects.{quote(name)}]") for name, table in subjects.items()}
    if default is None and not per:
        raise ConfigError(f"{path} maps no field: give symbol, price and size at least")
    return Mapping(default, per, str(path))


def _fields(table: Any, where: str) -> Fields:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of field names")
    unknown = sorted(set(table) - set(ROLES) - {"time_unit", "exchange_default"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {unknown}; the keys are {', '.join(ROLES)}, time_unit, exchange_default"
        )
    names = {r: table[r] for r in ROLES if r in table}
    bad = [r for r, v in names.items() if not isinstance(v, str) or not v]
    if bad:
        raise ConfigError(f"{where}: {', '.join(bad)} must name a field (text)")
    lacking = [r for r in REQUIRED if r not in names]
    if lacking:
        raise ConfigError(f"{where}: maps no {', '.join(lacking)} (symbol, price and size are required)")
    unit = table.get("time_unit", "ms")
    if unit not in UNITS:
        raise ConfigError(f"{where}: time_unit {unit!r} is none of {', '.join(UNITS)}")
    default = table.get("exchange_default")
    if default is not None and not isinstance(default, str):
        raise ConfigError(f"{where}: exchange_default must be text")
    return Fields(names, unit, default)
