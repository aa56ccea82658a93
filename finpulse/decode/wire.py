"""Step one of decoding: a message's bytes to a value, the way the topic's wire format encodes it.
Step two (feed shapes, finpulse/feeds/) turns the value into trades.

Two kinds of failure, two channels. Bytes that will never decode (broken JSON, a repeated key, a
tombstone, a message over the size limit) raise Undecodable: the message becomes a reject with the
reason. A wire format that cannot decode *now* (one that looks a schema up over the network, and
the look-up failed) raises ServiceUnavailable: nothing is rejected, and the worker pauses and tries
the same messages again, as it does while a sink is down.

JSON, the one wire format today, reads each message with orjson and refuses a JSON object that
repeats a key (orjson keeps the last of them without a word: which value was meant is ambiguous).
"""

from __future__ import annotations

import json
from typing import Protocol

import orjson


class Undecodable(Exception):
    """The bytes will never decode: `reason` says why; `parsed` is what was read despite that
    (a value with a repeated key, say), for naming its feed shape; None when nothing was."""

    def __init__(self, reason: str, parsed: object = None):
        super().__init__(reason)
        self.reason, self.parsed = reason, parsed


class Wire(Protocol):
    """A wire format: bytes of one message -> one value for the feed readers."""

    name: str

    def values(self, value: bytes | None, headers: list | None = None) -> object:
        """The message's value (`headers`: the record's, where a format keeps its schema id);
        Undecodable (never) or ServiceUnavailable (not now)."""

    def plain(self, msgs) -> bool:
        """Every message of the batch is plain JSON: the fast path (fast.py) may take it."""

    def records(self, msgs) -> list | dict | None:
        """The batch's records when each came through a typed schema (fast.fast_records may take
        them), one per message or as columns by field name; None when any did not, or could not
        be read (the careful path then says why)."""


class JsonWire:
    name = "json"

    def __init__(self, max_message_bytes: int = 1 << 20):
        self.max_message_bytes = max_message_bytes

    @staticmethod
    def plain(msgs) -> bool:
        return True

    @staticmethod
    def records(msgs) -> list | dict | None:
        return None

    def values(self, value: bytes | None, headers: list | None = None) -> object:
        if value is None:
            raise Undecodable("tombstone: the record has no value")
        if len(value) > self.max_message_bytes:
            raise Undecodable(
                f"message is {len(value)} bytes, over the {self.max_message_bytes}-byte "
                "limit (FINPULSE_MAX_MESSAGE_BYTES)"
            )
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise Undecodable(_json_reason(value, exc)) from None
        duplicate = _duplicate_key(value, obj)
        if duplicate is not None:
            raise Undecodable(duplicate, obj)
        return obj


def _json_reason(value: bytes, exc: Exception) -> str:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8: invalid byte at position {err.start}"
    if not value.strip():
        return "empty message"
    return f"not valid JSON: {exc}"


def _duplicate_key(value: bytes, obj: object) -> str | None:
    """Why `value` is rejected for a key repeated within one JSON object, or None. Exact.

    orjson keeps the last of repeated keys without a word. Cheap test first: re-encoding the
    parsed value writes each surviving string once, with a quote byte for each quote inside it;
    the message has as many quote bytes only if nothing was dropped, unless a \\u escape spelled
    a quote without one. Otherwise the stdlib parser walks it once more, key by key."""
    if not isinstance(obj, (dict, list)):
        return None
    if b"\\u" not in value:
        try:
            if orjson.dumps(obj).count(b'"') == value.count(b'"'):
                return None
        except orjson.JSONEncodeError:  # nesting deeper than orjson writes: the slow walk decides
            pass
    try:
        json.loads(value, object_pairs_hook=_no_repeats)
    except _RepeatedKey as exc:
        return f"duplicate key {exc.key!r} in a JSON object: which value is meant is ambiguous"
    except RecursionError:
        return "JSON nested too deeply to check for duplicate keys"
    except ValueError as exc:  # never seen: orjson is the stricter parser of the two
        return f"JSON the duplicate-key check cannot read: {exc}"
    return None


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_repeats(pairs: list[tuple[str, object]]) -> None:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
