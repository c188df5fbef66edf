"""The event contract: everything about events is derived from ``schemas/*.avsc``.

Each event schema carries two record-level properties besides the Avro standard:
``reelpulse.topic`` (the Kafka topic it is produced to) and ``reelpulse.key`` (the
dotted path of the field whose value is the record key, chosen for ordering).
Shared named types live in files named by their full name
(``reelpulse.common.Envelope.avsc``) and are inlined by fastavro when an event schema
that references them is loaded, so what the registry stores is self-contained.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import load_schema
from fastavro.validation import validate

from reelpulse.errors import SchemaViolation, WireFormatError

TOPIC_PROPERTY = "reelpulse.topic"
KEY_PROPERTY = "reelpulse.key"
PII_PROPERTY = "pii"
MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: its retention and cleanup policy."""

    name: str
    retention_ms: int
    cleanup_policy: str = "delete"
    description: str = ""

    def config(self) -> dict[str, str]:
        config = {"cleanup.policy": self.cleanup_policy, "min.insync.replicas": "1"}
        if self.cleanup_policy == "delete":
            config["retention.ms"] = str(self.retention_ms)
        return config


TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec("reelpulse.auth", 7 * DAY_MS, description="Sign-ins and sign-outs, keyed by account."),
        TopicSpec(
            "reelpulse.playback",
            7 * DAY_MS,
            description="Every playback event, keyed by playback session so a session stays in order.",
        ),
        TopicSpec("reelpulse.ratings", 30 * DAY_MS, description="Explicit ratings, keyed by account."),
        TopicSpec("reelpulse.searches", 7 * DAY_MS, description="Catalog searches, keyed by account."),
        TopicSpec(
            "reelpulse.experiments", 30 * DAY_MS, description="A/B experiment exposures, keyed by account."
        ),
        TopicSpec("reelpulse.cdn", 3 * DAY_MS, description="Sampled CDN edge access logs, keyed by edge."),
        TopicSpec(
            "reelpulse.catalog",
            -1,
            "compact",
            "Catalog titles, compacted: the latest record per title is the catalog.",
        ),
        TopicSpec(
            "reelpulse.alerts",
            30 * DAY_MS,
            description="Monitoring alerts (firing and resolved), keyed by alert id.",
        ),
        TopicSpec(
            "reelpulse.deadletter",
            30 * DAY_MS,
            description="Records a stage could not process, with reason and original bytes, "
            "for inspection and replay.",
        ),
    )
}


@dataclass(frozen=True)
class EventType:
    """One ``.avsc`` file: an event type, its topic, key and registry subject."""

    name: str
    schema: Mapping[str, Any] = field(repr=False)

    @property
    def full_name(self) -> str:
        return str(self.schema["name"])

    @property
    def topic(self) -> str:
        return str(self.schema[TOPIC_PROPERTY])

    @property
    def key_path(self) -> tuple[str, ...]:
        return tuple(str(self.schema[KEY_PROPERTY]).split("."))

    @property
    def doc(self) -> str:
        return str(self.schema.get("doc", ""))

    @property
    def subject(self) -> str:
        """Registry subject (TopicRecordNameStrategy: several event types share a topic)."""
        return f"{self.topic}-{self.full_name}"

    @cached_property
    def schema_json(self) -> str:
        """Self-contained schema text, as registered."""
        return json.dumps(self.schema, sort_keys=True)

    @cached_property
    def parsed(self) -> Any:
        return fastavro.parse_schema(json.loads(self.schema_json))

    @cached_property
    def pii_fields(self) -> tuple[str, ...]:
        """Dotted paths of every field marked ``"pii": true``."""
        return tuple(path for path, f in walk_fields(self.resolved) if f.get(PII_PROPERTY))

    @cached_property
    def resolved(self) -> Any:
        """The schema with every named-type reference replaced by its definition."""
        return resolved(dict(self.schema))

    def key_of(self, record: Mapping[str, Any]) -> str:
        value: Any = record
        for part in self.key_path:
            value = value[part]
        return str(value)

    @cached_property
    def record_shapes(self) -> tuple[tuple[tuple[str, ...], frozenset[str]], ...]:
        """Path and field names of the top-level record and each record nested in it
        directly (not through a union or array): where unknown keys are looked for."""
        return tuple(_record_shapes(self.schema, ()))

    def check(self, record: Mapping[str, Any]) -> None:
        """Raise :class:`SchemaViolation` naming the event type and field if ``record`` is
        invalid: a wrong type, a missing field or a key the schema does not have (Avro
        writers silently drop unknown keys, which would lose data)."""
        problems = _problems(self.parsed, record) or _unknown_keys(self.record_shapes, record)
        if problems:
            raise SchemaViolation(self.name, problems[0][0], problems[0][1])


class Contract:
    """All event types of a schemas directory, by name and by full name."""

    def __init__(self, schemas_dir: Path) -> None:
        self.schemas_dir = schemas_dir
        self.events: dict[str, EventType] = {}
        for path in sorted(schemas_dir.glob("*.avsc")):
            schema = load_schema(str(path), _write_hint=False)
            if isinstance(schema, dict) and TOPIC_PROPERTY in schema:
                self.events[path.stem] = EventType(path.stem, schema)
        self.by_full_name = {e.full_name: e for e in self.events.values()}

    def __iter__(self) -> Iterator[EventType]:
        return iter(self.events.values())

    def __getitem__(self, name: str) -> EventType:
        try:
            return self.events[name]
        except KeyError:
            known = ", ".join(sorted(self.events))
            raise KeyError(f"unknown event type {name!r}; known: {known}") from None

    def topics(self) -> list[TopicSpec]:
        """The spec of every topic an event type is produced to."""
        return [TOPICS[name] for name in sorted({e.topic for e in self})]


def walk_fields(schema: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield ``(dotted path, field)`` for every field of a resolved schema, nested ones
    included: ``a.b`` inside records and unions, ``a[].b`` inside array items, ``a{}.b``
    inside map values."""
    for f in schema.get("fields", []):
        path = f"{prefix}{f['name']}"
        yield path, f
        for nested, suffix in _nested_records(f["type"]):
            yield from walk_fields(nested, f"{path}{suffix}.")


def _nested_records(t: Any, suffix: str = "") -> Iterator[tuple[Mapping[str, Any], str]]:
    if isinstance(t, list):
        for branch in t:
            yield from _nested_records(branch, suffix)
    elif isinstance(t, dict) and t["type"] in ("record", "error"):
        yield t, suffix
    elif isinstance(t, dict) and t["type"] == "array":
        yield from _nested_records(t["items"], f"{suffix}[]")
    elif isinstance(t, dict) and t["type"] == "map":
        yield from _nested_records(t["values"], f"{suffix}{{}}")


PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})


def resolved(avro_type: Any) -> Any:
    """``avro_type`` with every named-type reference replaced by its definition.

    Named types get their full name in ``"name"`` (no ``"namespace"``). A reference to a
    type that is not defined earlier in ``avro_type`` raises :class:`ValueError`.
    """
    return _resolve(avro_type, {}, set(), "")


def _resolve(t: Any, named: dict[str, Any], open_: set[str], namespace: str) -> Any:
    if isinstance(t, str):
        return t if t in PRIMITIVES else _reference(t, named, open_, namespace)
    if isinstance(t, list):
        return [_resolve(branch, named, open_, namespace) for branch in t]
    kind = t["type"]
    if not isinstance(kind, str):
        return _resolve(kind, named, open_, namespace)
    if kind in NAMED:
        return _define(t, named, open_, namespace)
    if kind == "array":
        return {**t, "items": _resolve(t["items"], named, open_, namespace)}
    if kind == "map":
        return {**t, "values": _resolve(t["values"], named, open_, namespace)}
    if kind in PRIMITIVES:
        return dict(t)
    return _resolve(kind, named, open_, namespace)


def _reference(name: str, named: dict[str, Any], open_: set[str], namespace: str) -> Any:
    full = name if "." in name or not namespace else f"{namespace}.{name}"
    if full in open_:
        raise ValueError(f"recursive type {full!r} cannot be mapped to a table type")
    if full not in named:
        raise ValueError(f"type {name!r} is referenced before it is defined")
    return named[full]


def _define(t: Mapping[str, Any], named: dict[str, Any], open_: set[str], namespace: str) -> Any:
    full = _full_name(t, namespace)
    out = {k: v for k, v in t.items() if k != "namespace"} | {"name": full}
    named[full] = out
    if t["type"] in ("record", "error"):
        open_.add(full)
        inner = full.rpartition(".")[0]
        out["fields"] = [{**f, "type": _resolve(f["type"], named, open_, inner)} for f in t["fields"]]
        open_.discard(full)
    return out


def _full_name(t: Mapping[str, Any], namespace: str) -> str:
    name = str(t["name"])
    if "." in name:
        return name
    space = t.get("namespace", namespace)
    return f"{space}.{name}" if space else name


def _record_shapes(
    schema: Mapping[str, Any], path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], frozenset[str]]]:
    yield path, frozenset(f["name"] for f in schema["fields"])
    for f in schema["fields"]:
        if isinstance(f["type"], dict) and f["type"].get("type") == "record":
            yield from _record_shapes(f["type"], (*path, f["name"]))


def _unknown_keys(shapes: Any, record: Mapping[str, Any]) -> list[tuple[str, str]]:
    for path, allowed in shapes:
        value: Any = record
        for part in path:
            value = value[part]
        extra = value.keys() - allowed
        if extra:
            return [(".".join((*path, min(extra))), "is not a field of the schema")]
    return []


def _branches(avro_type: Any) -> list[Any]:
    return avro_type if isinstance(avro_type, list) else [avro_type]


def _problems(parsed: Any, record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Field-level problems of ``record`` against ``parsed`` (empty when valid)."""
    if validate(record, parsed, raise_errors=False):
        return []
    return list(_field_problems(parsed, record, ""))


def _field_problems(schema: Any, record: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if not isinstance(record, Mapping):
        yield prefix.rstrip(".") or "<record>", f"expected a record, got {type(record).__name__}"
        return
    names = {f["name"] for f in schema["fields"]}
    for extra in sorted(set(record) - names):
        yield f"{prefix}{extra}", "is not a field of the schema"
    for f in schema["fields"]:
        path = f"{prefix}{f['name']}"
        if f["name"] not in record and "default" not in f:
            yield path, "is required but missing"
            continue
        value = record.get(f["name"], f.get("default"))
        if validate(value, f["type"], raise_errors=False, field=path):
            continue
        nested = [b for b in _branches(f["type"]) if isinstance(b, dict) and b.get("type") == "record"]
        if nested and isinstance(value, Mapping):
            yield from _field_problems(nested[0], value, f"{path}.")
        else:
            yield path, f"value {value!r} does not match type {_type_name(f['type'])}"


def _type_name(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return " | ".join(_type_name(t) for t in avro_type)
    if isinstance(avro_type, dict):
        return str(avro_type.get("logicalType") or avro_type.get("name") or avro_type["type"])
    return str(avro_type)


def encode(schema_id: int, parsed: Any, record: Mapping[str, Any]) -> bytes:
    """Confluent wire format: magic byte, big-endian schema id, Avro binary body."""
    out = io.BytesIO()
    out.write(HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def split_wire(value: bytes) -> tuple[int, bytes]:
    """Return ``(schema id, Avro body)`` of a Confluent wire-format value."""
    if len(value) < HEADER.size:
        raise WireFormatError(f"value is {len(value)} bytes, shorter than the 5-byte header")
    magic, schema_id = HEADER.unpack_from(value)
    if magic != MAGIC_BYTE:
        raise WireFormatError(f"magic byte is {magic}, expected {MAGIC_BYTE}")
    return schema_id, value[HEADER.size :]


def decode(value: bytes, writer: Any, reader: Any | None = None) -> Any:
    """Decode the Avro body of a wire-format value written with ``writer``."""
    _, body = split_wire(value)
    return fastavro.schemaless_reader(io.BytesIO(body), writer, reader)
