"""From a request body to one outcome per event and the Kafka records to produce. Pure:
no I/O, no clock (the caller passes ``now_ms``), so every rule is unit-tested on bytes.

Wire shape (see README.md)::

    {"events": [{"type": "playback_heartbeat", "event": {...the record, as in the .avsc...}}]}

Each event becomes either its own record (the Confluent wire-format Avro value, keyed
as the contract says) or, when rejected, a ``dead_letter`` record for
``reelpulse.deadletter`` with the reason and the event's JSON as the original bytes.
"""

from __future__ import annotations

import operator
import struct
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from reelpulse.codec import compile_codec, encode_checked
from reelpulse.contract import Contract, EventType, encode
from reelpulse.errors import SchemaViolation

STAGE = "collector"
DEAD_LETTER = "dead_letter"
# Produced by the platform itself, never accepted from clients.
INTERNAL_TYPES = frozenset({"alert", DEAD_LETTER, "title"})
ITEM_KEYS = frozenset({"type", "event"})
HOUR_MS = 3_600_000

ACCEPTED, REJECTED, NOT_ACCEPTED = "accepted", "rejected", "not_accepted"


class BodyError(Exception):
    """The request body as a whole is refused: no event in it is looked at."""

    def __init__(self, status: int, error_type: str, reason: str, *, dead_letter: bool = True) -> None:
        super().__init__(reason)
        self.status, self.error_type, self.reason = status, error_type, reason
        self.dead_letter = dead_letter


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused: a machine-readable type, the field, a sentence."""

    error_type: str
    reason: str
    field: str | None = None


class Record(NamedTuple):  # tuples: one is made per event, and that adds up
    """One Kafka record to produce."""

    topic: str
    key: bytes | None
    value: bytes


class Outcome(NamedTuple):
    """What became of one event: its record (the event, or its dead letter) and, if
    rejected, why."""

    event_type: str | None
    event_id: str | None
    record: Record
    rejection: Rejection | None = None

    def result(self, delivered: bool = True) -> dict[str, Any]:
        """The event's entry in the response."""
        out: dict[str, Any] = {"status": ACCEPTED, "event_id": self.event_id}
        if not delivered:
            out["status"] = NOT_ACCEPTED
            out["reason"] = "Kafka did not acknowledge it in time; retry with the same event_id"
        elif self.rejection is not None:
            out["status"] = REJECTED
            out["error_type"] = self.rejection.error_type
            out["field"] = self.rejection.field
            out["reason"] = self.rejection.reason
        return out


# --------------------------------------------------------------------------- body


def read_body(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body, gunzipped if it says so, refused above ``limit`` bytes."""
    if len(raw) > limit:
        raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes", dead_letter=False)
    if content_encoding in (None, "", "identity"):
        return raw
    if content_encoding != "gzip":
        raise BodyError(
            415, "unsupported_encoding", "Content-Encoding must be gzip or absent", dead_letter=False
        )
    return gunzip(raw, limit)


def gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress one gzip member, never more than ``limit`` bytes (a gzip bomb stops there)."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as error:
        raise BodyError(400, "malformed_gzip", f"body is not valid gzip: {error}") from error
    if len(body) > limit:
        raise BodyError(
            413, "body_too_large", f"body exceeds {limit} bytes once decompressed", dead_letter=False
        )
    if not inflater.eof or inflater.unused_data:
        raise BodyError(400, "malformed_gzip", "gzip body is truncated or has trailing data")
    return body


def parse_batch(body: bytes, max_events: int) -> list[Any]:
    """The list of event items of a body, or :class:`BodyError`."""
    try:
        batch = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BodyError(400, "malformed_json", f"body is not valid JSON: {error}") from error
    if not isinstance(batch, dict) or not isinstance(batch.get("events"), list) or len(batch) != 1:
        raise BodyError(400, "malformed_batch", 'body must be an object {"events": [...]} and nothing else')
    events: list[Any] = batch["events"]
    if not events:
        raise BodyError(400, "empty_batch", "events is empty", dead_letter=False)
    if len(events) > max_events:
        raise BodyError(
            413, "batch_too_large", f"{len(events)} events; at most {max_events} a request", dead_letter=False
        )
    return events


# --------------------------------------------------------------------------- events


class _Kind:
    """What the validator needs of an accepted event type, resolved once."""

    __slots__ = (
        "codec",
        "event",
        "id_of",
        "id_path",
        "key_of",
        "name",
        "schema_id",
        "time_of",
        "time_path",
        "topic",
    )

    def __init__(self, event: EventType, schema_id: int) -> None:
        self.event, self.schema_id, self.name, self.topic = event, schema_id, event.name, event.topic
        self.codec = compile_codec(event, schema_id)
        self.time_path, self.id_path = _path(event, "event_time"), _path(event, "event_id")
        # For the fast path: plain lookups in a record the codec found valid.
        self.key_of = _getter(event.key_path)
        self.time_of = _getter(self.time_path)
        self.id_of = _getter(self.id_path)


def _getter(path: tuple[str, ...] | None) -> Callable[[Any], Any]:
    """``record[a][b]`` for path ``(a, b)``, for records known to be valid."""
    if not path:
        return lambda record: None
    if len(path) == 1:
        return operator.itemgetter(path[0])
    outer, inner = operator.itemgetter(path[0]), _getter(path[1:])
    return lambda record: inner(outer(record))


def _path(event: EventType, name: str) -> tuple[str, ...] | None:
    """Where ``name`` (event_time, event_id) is: at the top or in the envelope."""
    shapes = dict(event.record_shapes)
    for path in ((), ("envelope",)):
        if name in shapes.get(path, ()):
            return (*path, name)
    return None


def _get(record: Any, path: tuple[str, ...] | None) -> Any:
    """The value at ``path`` of a record that may be anything (``None`` if it is not there)."""
    if not path:
        return None
    value = record
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class Validator:
    """Turns event items into outcomes; schema ids and codecs are resolved once."""

    def __init__(
        self,
        contract: Contract,
        schema_ids: Mapping[str, int],
        clock_skew_s: float,
        accepted_types: Sequence[str] | None = None,
    ) -> None:
        names = accepted_types or [e.name for e in contract if e.name not in INTERNAL_TYPES]
        self.kinds = {name: _Kind(contract[name], schema_ids[name]) for name in names}
        self.dead_letters = contract[DEAD_LETTER]
        self.dead_letter_id = schema_ids[DEAD_LETTER]
        self.skew_ms = int(clock_skew_s * 1000)
        self.known = ", ".join(sorted(self.kinds))

    def outcome(self, item: Any, now_ms: int, headers: Sequence[Mapping[str, Any]] = ()) -> Outcome:
        """Validate and encode one item of ``events``; a rejection carries its dead letter."""
        if type(item) is dict and len(item) == 2:  # the fast path: a plainly valid event
            name, record = item.get("type"), item.get("event")
            kind = self.kinds.get(name) if type(name) is str else None
            value = kind.codec(record) if kind is not None and kind.codec is not None else None
            if kind is not None and value is not None and self._near(kind.time_of(record), now_ms):
                key = str(kind.key_of(record)).encode()
                return Outcome(kind.name, kind.id_of(record), Record(kind.topic, key, value))
        return self._checked(item, now_ms, headers)

    def _near(self, event_time: int | None, now_ms: int) -> bool:
        return event_time is None or -self.skew_ms <= event_time - now_ms <= self.skew_ms

    def _checked(self, item: Any, now_ms: int, headers: Sequence[Mapping[str, Any]]) -> Outcome:
        """The general path: the contract's verdict, and the reason when it is no."""
        kind, problem = self._kind_of(item)
        record = item.get("event") if isinstance(item, dict) else None
        event_id = _get(record, kind.id_path) if kind else None
        event_id = event_id if isinstance(event_id, str) else None
        if kind is not None and problem is None and isinstance(record, dict):
            value, problem = self._encode(kind, record)
            problem = problem or self._skew(kind, record, now_ms)
            if value is not None and problem is None:
                key = kind.event.key_of(record).encode()
                return Outcome(kind.event.name, event_id, Record(kind.event.topic, key, value))
        problem = problem or Rejection("malformed_event", "event must be an object", "event")
        letter = self.dead_letter(problem, orjson.dumps(item), now_ms, headers)
        return Outcome(kind.event.name if kind else None, event_id, letter, problem)

    def _kind_of(self, item: Any) -> tuple[_Kind | None, Rejection | None]:
        if not isinstance(item, dict):
            return None, Rejection("malformed_event", 'each event must be {"type": ..., "event": {...}}')
        extra = item.keys() - ITEM_KEYS
        if extra:
            return None, Rejection("malformed_event", f"unknown key {min(extra)!r} next to type and event")
        name = item.get("type")
        if not isinstance(name, str):
            return None, Rejection("malformed_event", "type must be a string", "type")
        kind = self.kinds.get(name)
        if kind is None:
            reason = f"unknown event type {name[:100]!r}; accepted: {self.known}"
            return None, Rejection("unknown_event_type", reason, "type")
        return kind, None

    @staticmethod
    def _encode(kind: _Kind, record: dict[str, Any]) -> tuple[bytes | None, Rejection | None]:
        if kind.codec is not None:
            value = kind.codec(record)
            if value is not None:
                return value, None
        try:
            return encode_checked(kind.event, kind.schema_id, record), None
        except SchemaViolation as violation:
            return None, Rejection("schema_violation", str(violation), violation.field)
        except (ValueError, TypeError, OverflowError, struct.error) as error:
            reason = f"{kind.event.name} event cannot be written as Avro: {error}"
            return None, Rejection("schema_violation", reason)

    def _skew(self, kind: _Kind, record: dict[str, Any], now_ms: int) -> Rejection | None:
        event_time = _get(record, kind.time_path)
        if not isinstance(event_time, int) or abs(event_time - now_ms) <= self.skew_ms:
            return None
        hours = (event_time - now_ms) / HOUR_MS
        where = "ahead of" if hours > 0 else "behind"
        reason = (
            f"event_time is {abs(hours):,.1f} h {where} the collector's clock; "
            f"the limit is {self.skew_ms / HOUR_MS:g} h either way"
        )
        return Rejection("clock_skew", reason, ".".join(kind.time_path or ()))

    def dead_letter(
        self,
        problem: Rejection,
        original: bytes,
        now_ms: int,
        headers: Sequence[Mapping[str, Any]] = (),
    ) -> Record:
        """The ``dead_letter`` record of a rejected event or body."""
        record = {
            "dead_letter_id": str(uuid.uuid4()),
            "failed_at": now_ms,
            "stage": STAGE,
            "error_type": problem.error_type,
            "reason": problem.reason,
            "source_topic": None,
            "source_partition": None,
            "source_offset": None,
            "schema_id": None,
            "original_key": None,
            "original_value": original,
            "headers": list(headers),
        }
        value = encode(self.dead_letter_id, self.dead_letters.parsed, record)
        return Record(self.dead_letters.topic, STAGE.encode(), value)


def request_headers(client: str | None, user_agent: str | None) -> list[dict[str, Any]]:
    """What a dead letter keeps of the HTTP request: the client name (never its key) and
    the user agent."""
    pairs = (("collector.client", client), ("user-agent", user_agent))
    return [{"key": key, "value": value.encode()[:512]} for key, value in pairs if value]
