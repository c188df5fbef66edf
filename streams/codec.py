"""Decoding the Confluent wire format through the schema registry.

Writer schemas are fetched from the registry once per schema id and cached; a record is
read with its writer schema and, when the writer is another version than the contract's
(older or newer), resolved into the contract's schema (the reader schema), so every
version on a topic decodes to the same shape. Logical types are left as written
(timestamp-millis stays epoch milliseconds, uuid stays a string): the monitors compare
numbers, and skipping the conversion halves the cost of a decode.

Every failure is a :class:`DecodeFailure` whose ``error_type`` is the dead-letter class.
An unreachable registry is not a property of the record: it raises ``RegistryError`` so
the caller retries instead of dead-lettering good data.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from faust.serializers.codecs import Codec

from reelpulse.contract import Contract, EventType, encode
from reelpulse.errors import RegistryError
from streams.errors import DecodeFailure

HEADER = struct.Struct(">bI")
UNKNOWN_ID_RETRY_S = 30.0  # an unknown id is asked again after this long (it may be registered)
NOT_FOUND_CODES = {40401, 40403}


def strip_logical_types(schema: Any) -> Any:
    """The schema without ``logicalType`` annotations (same binary encoding)."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


def registry_fetcher(client: SchemaRegistryClient) -> Callable[[int], str | None]:
    """Schema text by id from the registry; None when the id does not exist."""

    def fetch(schema_id: int) -> str | None:
        try:
            return str(client.get_schema(schema_id).schema_str)
        except SchemaRegistryError as error:
            if error.error_code in NOT_FOUND_CODES or error.http_status_code == 404:
                return None
            raise RegistryError(f"schema id {schema_id}", str(error)) from error
        except Exception as error:  # connection refused, timeout: the registry, not the record
            raise RegistryError(f"schema id {schema_id}", f"{type(error).__name__}: {error}") from error

    return fetch


class Writer:
    """A cached writer schema: its event type and the parsed writer and reader schemas."""

    __slots__ = ("event", "reader", "writer")

    def __init__(self, event: EventType, writer: Any, reader: Any | None) -> None:
        self.event, self.writer, self.reader = event, writer, reader


class WireDecoder:
    """Decode wire-format values of the event types on ``topics`` (all topics if None)."""

    def __init__(
        self,
        contract: Contract,
        fetch: Callable[[int], str | None],
        topics: Iterable[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.contract, self.fetch, self.clock = contract, fetch, clock
        self.topics = set(topics) if topics is not None else None
        self.writers: dict[int, Writer] = {}
        self.unknown: dict[int, float] = {}  # schema id -> when it was found missing
        self.unexpected: dict[int, DecodeFailure] = {}  # schema ids of other topics' event types
        self._readers: dict[str, Any] = {}

    def decode(self, value: bytes | None, topic: str | None = None) -> tuple[str, dict[str, Any]]:
        """``(event type, record)`` of one value read from ``topic`` (any topic if None),
        or a :class:`DecodeFailure`."""
        if value is None or len(value) < HEADER.size:
            size = 0 if value is None else len(value)
            raise DecodeFailure("undecodable", f"value is {size} bytes, shorter than the 5-byte header")
        magic, schema_id = HEADER.unpack_from(value)
        if magic != 0:
            raise DecodeFailure("undecodable", f"magic byte is {magic}, expected 0 (Confluent wire format)")
        writer = self.writers.get(schema_id) or self._writer(schema_id)
        if topic is not None and writer.event.topic != topic:
            raise DecodeFailure(
                "unexpected_event_type",
                f"schema id {schema_id} is {writer.event.full_name}, "
                f"an event type of {writer.event.topic}, not of {topic}",
                schema_id,
            )
        body = io.BytesIO(value)
        body.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(body, writer.writer, writer.reader)
        except Exception as error:  # any failure to read untrusted bytes is the record's fault
            raise DecodeFailure(
                "schema_violation",
                f"body does not decode as {writer.event.full_name} (schema id {schema_id}): "
                f"{type(error).__name__}: {error}",
                schema_id,
            ) from error
        if not isinstance(record, dict):
            raise DecodeFailure("schema_violation", f"schema id {schema_id} is not a record", schema_id)
        if body.tell() != len(value):
            raise DecodeFailure(
                "schema_violation",
                f"{len(value) - body.tell()} bytes left over after decoding {writer.event.full_name} "
                f"(schema id {schema_id})",
                schema_id,
            )
        return writer.event.name, record

    def _writer(self, schema_id: int) -> Writer:
        if schema_id in self.unexpected:
            failure = self.unexpected[schema_id]
            raise DecodeFailure(failure.error_type, failure.reason, schema_id)
        missing_since = self.unknown.get(schema_id)
        if missing_since is not None and self.clock() - missing_since < UNKNOWN_ID_RETRY_S:
            raise DecodeFailure(
                "unknown_schema_id", f"schema id {schema_id} is not in the registry", schema_id
            )
        text = self.fetch(schema_id)
        if text is None:
            self.unknown[schema_id] = self.clock()
            raise DecodeFailure(
                "unknown_schema_id", f"schema id {schema_id} is not in the registry", schema_id
            )
        self.unknown.pop(schema_id, None)
        try:
            writer = self._build(schema_id, json.loads(text))
        except DecodeFailure as failure:
            self.unexpected[schema_id] = failure
            raise
        self.writers[schema_id] = writer
        return writer

    def _build(self, schema_id: int, schema: Any) -> Writer:
        name = _full_name(schema)
        event = self.contract.by_full_name.get(name)
        if event is None or (self.topics is not None and event.topic not in self.topics):
            where = f"topics {sorted(self.topics)}" if self.topics is not None else "the contract"
            raise DecodeFailure(
                "unexpected_event_type",
                f"schema id {schema_id} is {name}, not an event type of {where}",
                schema_id,
            )
        writer = fastavro.parse_schema(strip_logical_types(schema))
        reader_schema = strip_logical_types(json.loads(event.schema_json))
        same = fastavro.schema.to_parsing_canonical_form(writer) == fastavro.schema.to_parsing_canonical_form(
            fastavro.parse_schema(reader_schema)
        )
        reader = None if same else self._reader(event, reader_schema)
        return Writer(event, writer, reader)

    def _reader(self, event: EventType, reader_schema: Any) -> Any:
        if event.name not in self._readers:
            self._readers[event.name] = fastavro.parse_schema(reader_schema)
        return self._readers[event.name]


def _full_name(schema: Any) -> str:
    if not isinstance(schema, dict) or "name" not in schema:
        return "<not a record schema>"
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


class AvroCodec(Codec):
    """A Faust codec for one event type: ``dumps`` writes the Confluent wire format with the
    registered schema id, ``loads`` reads any registered version of the contract's event
    types through a :class:`WireDecoder` (the record dict; the event type is dropped).

    Register it with ``faust.serializers.codecs.register(name, AvroCodec(...))`` and use
    the name as a topic's ``value_serializer``.
    """

    def __init__(self, decoder: WireDecoder, event: EventType, schema_id: int, **kwargs: Any) -> None:
        self.decoder, self.event, self.schema_id = decoder, event, schema_id
        super().__init__(**kwargs)

    def _loads(self, s: bytes) -> Any:
        return self.decoder.decode(s)[1]

    def _dumps(self, s: Any) -> bytes:
        return encode(self.schema_id, self.event.parsed, s)
