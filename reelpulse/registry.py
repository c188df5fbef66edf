"""The schema registry seam: registering the contract, looking up schema ids and
checking compatibility, over the Confluent-compatible API (Apicurio's ``ccompat/v7``).

Subjects follow the TopicRecordNameStrategy (``<topic>-<record full name>``) because
several event types share a topic. Every subject is held to BACKWARD_TRANSITIVE
compatibility: a new version must read data written with every earlier version.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from reelpulse.contract import Contract, EventType
from reelpulse.errors import RegistryError
from reelpulse.settings import Settings

COMPATIBILITY = "BACKWARD_TRANSITIVE"
RELEASED_DIR = "released"
NOT_FOUND_CODES = {40401, 40402, 40403}


def client(settings: Settings) -> SchemaRegistryClient:
    return SchemaRegistryClient(settings.schema_registry_config())


def avro(event: EventType) -> Schema:
    return Schema(event.schema_json, "AVRO")


def register(registry: SchemaRegistryClient, event: EventType) -> int:
    """Register one event type under its subject with the contract's compatibility rule."""
    try:
        registry.set_compatibility(event.subject, COMPATIBILITY)
        return registry.register_schema(event.subject, avro(event))
    except SchemaRegistryError as error:
        raise RegistryError(event.subject, _reason(error)) from error


def register_all(settings: Settings, contract: Contract) -> dict[str, int]:
    """Register every event type; returns schema id by event type name."""
    registry = client(settings)
    registry.set_compatibility(level=COMPATIBILITY)
    return {event.name: register(registry, event) for event in contract}


def lookup_ids(settings: Settings, contract: Contract) -> dict[str, int]:
    """Schema id of every event type, without registering anything."""
    registry = client(settings)
    return {event.name: _lookup(registry, event) for event in contract}


def _lookup(registry: SchemaRegistryClient, event: EventType) -> int:
    try:
        schema_id = registry.lookup_schema(event.subject, avro(event)).schema_id
    except SchemaRegistryError as error:
        raise _lookup_error(event, error) from error
    if schema_id is None:
        raise RegistryError(event.subject, "the registry returned no schema id")
    return schema_id


def _lookup_error(event: EventType, error: SchemaRegistryError) -> RegistryError:
    if error.error_code in NOT_FOUND_CODES:
        return RegistryError(
            event.subject, "this version of the schema is not registered; run `reelpulse schemas register`"
        )
    return RegistryError(event.subject, _reason(error))


def _reason(error: SchemaRegistryError) -> str:
    return f"HTTP {error.http_status_code}, code {error.error_code}: {error.error_message}"


@dataclass(frozen=True)
class CompatibilityResult:
    subject: str
    compatible: bool
    detail: str


def check_compatibility(settings: Settings, contract: Contract) -> list[CompatibilityResult]:
    """Compare every local schema with the latest version registered under its subject."""
    registry = client(settings)
    return [_check(registry, event) for event in contract]


def _check(
    registry: SchemaRegistryClient, event: EventType, subject: str | None = None
) -> CompatibilityResult:
    try:
        ok = registry.test_compatibility(subject or event.subject, avro(event))
    except SchemaRegistryError as error:
        if error.error_code in NOT_FOUND_CODES:
            return CompatibilityResult(event.subject, True, "new subject")
        raise RegistryError(event.subject, _reason(error)) from error
    detail = "compatible" if ok else f"breaks {COMPATIBILITY} against the registered versions"
    return CompatibilityResult(event.subject, bool(ok), detail)


# --------------------------------------------------------------------------- released versions


def released_dir(contract: Contract) -> Path:
    return contract.schemas_dir / RELEASED_DIR


def release(contract: Contract) -> list[Path]:
    """Snapshot every schema as released: what later changes must stay compatible with."""
    target = released_dir(contract)
    target.mkdir(exist_ok=True)
    written = []
    for event in contract:
        path = target / f"{event.subject}.json"
        path.write_text(json.dumps(event.schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def released_schemas(contract: Contract) -> dict[str, str]:
    """Released schema text by subject."""
    return {path.stem: path.read_text() for path in sorted(released_dir(contract).glob("*.json"))}


def check_against_released(settings: Settings, contract: Contract) -> list[CompatibilityResult]:
    """Compare every local schema with its released snapshot, using the registry's own
    compatibility rules on a scratch subject that is deleted afterwards."""
    registry = client(settings)
    released = released_schemas(contract)
    return [_check_released(registry, event, released.get(event.subject)) for event in contract]


def _check_released(
    registry: SchemaRegistryClient, event: EventType, released: str | None
) -> CompatibilityResult:
    if released is None:
        return CompatibilityResult(event.subject, True, "not released yet")
    scratch = f"reelpulse.release-check.{uuid.uuid4().hex[:12]}.{event.full_name}"
    try:
        registry.set_compatibility(scratch, COMPATIBILITY)
        registry.register_schema(scratch, Schema(released, "AVRO"))
        return _check(registry, event, scratch)
    finally:
        _delete(registry, scratch)


def _delete(registry: SchemaRegistryClient, subject: str) -> None:
    with contextlib.suppress(SchemaRegistryError):
        registry.delete_subject(subject)
        registry.delete_subject(subject, permanent=True)
