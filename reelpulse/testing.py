"""Helpers for tests of reelpulse and of code built on it: settings for a throwaway
local stack on free ports."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reelpulse.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_settings(state_dir: Path, **overrides: object) -> Settings:
    """Settings for a local stack on free ports with its own state dir (shared jar cache)."""
    values: dict[str, object] = {
        "state_dir": state_dir,
        "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
        "kafka_controller_port": free_port(),
        "schema_registry_url": f"http://127.0.0.1:{free_port()}/apis/ccompat/v7",
        "registry_management_port": free_port(),
        "kafka_heap": "384m",
        "registry_heap": "256m",
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


settings_env = Settings.as_env  # the environment a child process needs for these settings


def plain(value: Any) -> Any:
    """Undo the logical-type conversions of an Avro reader (datetime, UUID), so a decoded
    record compares equal to the record that was written."""
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def decoded_records(settings: Settings, topic: str) -> list[tuple[bytes | None, Any]]:
    """Every (key, value) now in ``topic``, decoded the way a consumer team would: with
    confluent-kafka's own Avro deserializer and the registry, logical types undone."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from reelpulse.topics import read_topic

    deserialize = AvroDeserializer(SchemaRegistryClient(settings.schema_registry_config()))
    context = SerializationContext(topic, MessageField.VALUE)
    return [(m.key(), plain(deserialize(m.value(), context))) for m in read_topic(settings, topic)]


@contextlib.contextmanager
def running_stack(state_dir: Path) -> Iterator[Settings]:
    """A local stack on free ports, provisioned with every topic and schema of the
    contract; stopped (no process left) when the block ends."""
    from reelpulse import registry, stack, topics
    from reelpulse.contract import Contract

    settings = stack_settings(state_dir)
    try:
        stack.up(settings)
        contract = Contract(settings.schemas_dir)
        topics.ensure_topics(settings, contract.topics())
        registry.register_all(settings, contract)
        yield settings
    finally:
        stack.down(settings)
