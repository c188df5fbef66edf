"""Producing events: idempotent, ``acks=all``, compressed, Confluent wire format.

Schema ids are resolved once per event type when the producer starts (never per
record). Each record is validated against its schema; an invalid one raises
:class:`SchemaViolation` naming the event type and the field before anything is sent.
Validation and encoding happen in one pass through a function generated from each
schema (:mod:`reelpulse.codec`); a record it does not recognise as plainly valid takes
the contract's path, which raises the precise error or encodes with fastavro. A caller
whose records are already checked (the importer validates each row itself) may pass
``validate=False`` to skip the contract's check on that slow path.
A full local buffer blocks the caller (backpressure) instead of growing without bound.
Failed deliveries are collected and raised from :meth:`EventProducer.flush`, and
passed to an optional callback as they happen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from reelpulse import registry
from reelpulse.codec import Codec, compile_codec
from reelpulse.contract import Contract, EventType, encode
from reelpulse.errors import DeliveryError
from reelpulse.settings import Settings

log = logging.getLogger("reelpulse.producer")

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 262_144,
    "delivery.timeout.ms": 300_000,
}
BACKPRESSURE_POLL_S = 0.05
POLL_EVERY = 1000  # serve delivery reports every N records, not after each one


@dataclass
class DeliveryStats:
    """What the broker acknowledged or refused so far."""

    acked: int = 0
    failed: int = 0
    acked_by_topic: dict[str, int] = field(default_factory=dict)


class EventProducer:
    """Produce contract events to Kafka. Use as a context manager: leaving it flushes."""

    def __init__(
        self,
        settings: Settings,
        contract: Contract,
        *,
        schema_ids: Mapping[str, int] | None = None,
        on_delivery: Callable[[DeliveryError | None, Message], None] | None = None,
        config: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> None:
        self.contract = contract
        self.validate = validate
        self.schema_ids = dict(schema_ids or registry.lookup_ids(settings, contract))
        self.stats = DeliveryStats()
        self.failures: list[DeliveryError] = []
        self._codecs: dict[str, Codec | None] = {
            name: compile_codec(contract[name], schema_id) for name, schema_id in self.schema_ids.items()
        }
        self._unpolled = 0
        self._on_delivery = on_delivery
        self._producer = Producer({**settings.kafka_client_config(), **PRODUCER_DEFAULTS, **(config or {})})

    def produce(self, event_type: str, record: Mapping[str, Any]) -> None:
        """Validate, encode and enqueue one event; blocks while the local buffer is full."""
        event = self.contract[event_type]
        codec = self._codecs.get(event.name)
        value = codec(record) if codec else None
        if value is None:  # not plainly valid, or no fast codec: the contract decides
            if self.validate:
                event.check(record)
            value = encode(self.schema_ids[event.name], event.parsed, record)
        self._send(event, record, value)

    def produce_all(self, events: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Produce ``(event_type, record)`` pairs; returns how many were enqueued."""
        count = 0
        for event_type, record in events:
            self.produce(event_type, record)
            count += 1
        return count

    def _send(self, event: EventType, record: Mapping[str, Any], value: bytes) -> None:
        key = event.key_of(record).encode()
        while True:
            try:
                self._producer.produce(event.topic, value, key, on_delivery=self._delivered)
                break
            except BufferError:
                self._producer.poll(BACKPRESSURE_POLL_S)
        self._unpolled += 1
        if self._unpolled >= POLL_EVERY:
            self._producer.poll(0)
            self._unpolled = 0

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        failure = None
        if error is None:
            self.stats.acked += 1
            topic = message.topic() or ""
            self.stats.acked_by_topic[topic] = self.stats.acked_by_topic.get(topic, 0) + 1
        else:
            self.stats.failed += 1
            key = message.key()
            failure = DeliveryError(message.topic() or "", key.decode() if key else None, error.str())
            self.failures.append(failure)
            log.error("%s", failure)
        if self._on_delivery:
            self._on_delivery(failure, message)

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every enqueued event; raise the first delivery failure, if any."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryError("*", None, f"{remaining} events still unacknowledged after {timeout}s")
        if self.failures:
            first, count = self.failures[0], len(self.failures)
            raise DeliveryError(first.topic, first.key, f"{first.reason} ({count} failed deliveries)")

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.flush()
        else:
            self._producer.flush(10)
