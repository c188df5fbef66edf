"""The Kafka seam of the collector: produce a request's records and wait, without blocking
the event loop, until Kafka has acknowledged each of them or the deadline has passed.

One idempotent ``acks=all`` producer per worker process (the project's
``PRODUCER_DEFAULTS``, with a short linger for latency and a message timeout equal to
the request deadline). Delivery reports are served on the event loop by a task that
polls the producer while anything is in flight, so the callbacks run on the loop's
thread and resolve each request's future directly: no locks, no threads. A request's
future completes when every one of its records is reported (acknowledged or failed).

A record not acknowledged by the deadline is reported as not delivered, but it can still
reach Kafka later (it was in flight when the broker went away); clients retry with the
same event ids and every downstream stage deduplicates on ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from collector.batch import Record
from reelpulse.producer import PRODUCER_DEFAULTS
from reelpulse.settings import Settings

log = logging.getLogger("collector.sink")

POLL_INTERVAL_S = 0.001
DEADLINE_SLACK_S = 1.0
# Latency matters more than batch size here: a request waits for its records.
COLLECTOR_PRODUCER = {"linger.ms": 1, "log_level": 3}


class Sink(Protocol):
    """Where accepted events and dead letters go."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, records: Sequence[Record]) -> list[bool]:
        """Produce ``records``; which of them were acknowledged (in order)."""
        ...

    async def ready(self) -> str | None:
        """``None`` if the broker is reachable, else why not."""
        ...


class _Pending:
    """The records of one request awaiting their delivery reports. One callback for the
    whole request (a callable per record costs twice the CPU of producing it); a failed
    record is told apart by its value, which is unique (each holds its event id)."""

    __slots__ = ("failed", "future", "remaining")

    def __init__(self, count: int, future: asyncio.Future[None]) -> None:
        self.remaining = count
        self.failed: set[bytes] = set()
        self.future = future

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed.add(message.value() or b"")
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)

    def acked(self, records: Sequence[Record], sent: int) -> list[bool]:
        """Per record: acknowledged? When reports are still missing (the deadline passed)
        none counts as acknowledged: resending one that did arrive only makes a duplicate."""
        if self.remaining > 0:
            return [False] * len(records)
        if not self.failed:
            return [index < sent for index in range(len(records))]
        return [index < sent and r.value not in self.failed for index, r in enumerate(records)]


class KafkaSink:
    """Produces with confluent-kafka; reports are served on the event loop."""

    def __init__(
        self,
        settings: Settings,
        config: dict[str, Any] | None = None,
        on_error: Callable[[KafkaError], None] | None = None,
    ) -> None:
        self.deadline_s = settings.collector_delivery_timeout_s
        timeout_ms = int(self.deadline_s * 1000)
        self.config = {
            **settings.kafka_client_config(),
            **PRODUCER_DEFAULTS,
            **COLLECTOR_PRODUCER,
            "delivery.timeout.ms": timeout_ms,
            "request.timeout.ms": min(30_000, timeout_ms),
            **(config or {}),
        }
        self._on_error = on_error
        self._producer: Producer | None = None
        self._in_flight = 0
        self._wakeup: asyncio.Event | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("KafkaSink.start() was not awaited")
        return self._producer

    async def start(self) -> None:
        self._producer = Producer({**self.config, "error_cb": self._error})
        self._wakeup = asyncio.Event()
        self._poller = asyncio.create_task(self._serve_reports(), name="collector-delivery-reports")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Wait for what is in flight (up to ``timeout_s``), then stop serving reports."""
        if self._poller is None:
            return
        # On the loop's thread, so late delivery reports still run where their futures live.
        remaining = self.producer.flush(timeout_s)
        if remaining:
            log.error("%d records still unacknowledged at shutdown", remaining)
        self._poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poller
        self._poller = None
        self._producer = None  # librdkafka closes its connections when the object goes

    def _error(self, error: KafkaError) -> None:
        log.warning("kafka: %s", error.str())
        if self._on_error:
            self._on_error(error)

    async def _serve_reports(self) -> None:
        assert self._wakeup is not None
        while True:
            if self._in_flight == 0:
                self._wakeup.clear()
                await self._wakeup.wait()
            self.producer.poll(0)
            await asyncio.sleep(POLL_INTERVAL_S)

    async def send(self, records: Sequence[Record]) -> list[bool]:
        pending = _Pending(len(records), asyncio.get_running_loop().create_future())
        produce, delivered = self.producer.produce, pending.delivered
        sent = 0
        try:
            for topic, key, value in records:
                produce(topic, value, key, on_delivery=delivered)
                sent += 1
        except BufferError:
            log.warning("producer queue full: %d of %d records not sent", len(records) - sent, len(records))
        pending.remaining -= len(records) - sent
        if pending.remaining > 0:
            await self._wait(pending)
        return pending.acked(records, sent)

    async def _wait(self, pending: _Pending) -> None:
        assert self._wakeup is not None
        self._in_flight += 1
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(pending.future), self.deadline_s + DEADLINE_SLACK_S)
        except TimeoutError:
            log.warning("%d records not acknowledged within the deadline", pending.remaining)
        finally:
            self._in_flight -= 1

    async def ready(self) -> str | None:
        try:
            metadata = await asyncio.to_thread(self.producer.list_topics, timeout=2.0)
        except KafkaException as error:
            return f"Kafka at {self.config['bootstrap.servers']} is not reachable: {error}"
        return None if metadata.brokers else "Kafka reports no brokers"
