"""Alerting consumers of ``reelpulse.alerts``: a live console view and a webhook sink.

Both are Kafka consumer groups that commit after handling each notification, so a
restarted sink resumes where it stopped (at least once: the last notification before a
crash can come again; webhook receivers get an ``Idempotency-Key`` of
``<alert_id>:<status>`` to drop it). Within one run each ``(alert_id, status)`` is shown
or posted once even if the topic holds it twice.

Webhook error policy: 2xx is delivered; a connection error, a timeout, 408, 425, 429 or a
5xx is retried with exponential backoff up to ``max_attempts``; any other status, or
running out of attempts, is a permanent failure: the alert record goes to
``reelpulse.deadletter`` (stage ``alerts.webhook``, error type ``delivery_failed``) with
the reason, and the sink moves on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from reelpulse.settings import Settings
from streams.alerts import Fence
from streams.codec import WireDecoder
from streams.deadletter import dead_letter
from streams.errors import DecodeFailure, WebhookError

log = logging.getLogger("streams.sinks")
ALERTS_TOPIC = "reelpulse.alerts"
RETRYABLE = frozenset({408, 425, 429})
TIMEOUT_S = 15.0


def notified(settings: Settings, decoder: WireDecoder, lookback_ms: int) -> set[tuple[str, str]]:
    """Every ``(alert_id, status)`` on the alerts topic from the last ``lookback_ms``."""
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": "reelpulse-streams-fence", "log_level": 3}
    )
    seen: set[tuple[str, str]] = set()
    try:
        metadata = consumer.list_topics(ALERTS_TOPIC, timeout=TIMEOUT_S).topics[ALERTS_TOPIC]
        since = int(time.time() * 1000) - lookback_ms
        wanted = [TopicPartition(ALERTS_TOPIC, p, since) for p in sorted(metadata.partitions)]
        for tp in consumer.offsets_for_times(wanted, timeout=TIMEOUT_S):
            for message in _read_to_end(consumer, tp):
                try:
                    alert = decoder.decode(message.value())[1]
                except DecodeFailure:
                    continue  # not an alert this worker could have sent
                seen.add((str(alert["alert_id"]), str(alert["status"])))
    finally:
        consumer.close()
    return seen


def _read_to_end(consumer: Consumer, tp: TopicPartition) -> Iterator[Message]:
    low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=TIMEOUT_S)
    start = tp.offset if tp.offset >= 0 else high
    if start >= high:
        return
    consumer.assign([TopicPartition(tp.topic, tp.partition, max(start, low))])
    position = start
    while position < high:
        for message in consumer.consume(500, timeout=1.0):
            if message.error() is not None:
                raise KafkaException(message.error())
            position = (message.offset() or position) + 1
            yield message


@dataclass
class Notification:
    """One alert record as consumed, with where it came from."""

    alert: dict[str, Any]
    message: Message

    @property
    def key(self) -> str:
        return f"{self.alert['alert_id']}:{self.alert['status']}"


@dataclass
class AlertFeed:
    """The alerts topic as a consumer group: yields each new notification once."""

    settings: Settings
    decoder: WireDecoder
    group: str
    from_beginning: bool = False
    fence: Fence = field(default_factory=Fence)
    undecodable: int = 0

    def __post_init__(self) -> None:
        self.consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if self.from_beginning else "latest",
                "fetch.wait.max.ms": 50,
                "log_level": 3,
            }
        )
        self.consumer.subscribe([ALERTS_TOPIC])

    def poll(self, timeout: float = 0.5) -> Iterator[Notification]:
        for message in self.consumer.consume(100, timeout=timeout):
            if message.error() is not None:
                raise KafkaException(message.error())
            try:
                alert = self.decoder.decode(message.value())[1]
            except DecodeFailure as failure:
                self.undecodable += 1
                log.warning("skipping undecodable alert record at offset %s: %s", message.offset(), failure)
                self.commit(message)
                continue
            if self.fence.admit(alert):
                yield Notification(alert, message)
            else:
                self.commit(message)

    def commit(self, message: Message) -> None:
        self.consumer.commit(message=message, asynchronous=False)

    def close(self) -> None:
        self.consumer.close()


def iso(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def line(alert: dict[str, Any]) -> str:
    """One plain-text line per notification."""
    return (
        f"{iso(alert['event_time'])} {alert['status']:<8} {alert['severity']:<8} {alert['rule']} "
        f"{alert['entity_type']}={alert['entity']} observed={alert['observed']:.4g} "
        f"window={iso(alert['window_start'])}-{iso(alert['window_end'])} id={alert['alert_id']}"
    )


# --------------------------------------------------------------------------- webhook


def retry_delay(attempt: int, base_s: float, cap_s: float = 30.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): base, 2x base, 4x base..."""
    return float(min(cap_s, base_s * 2 ** (attempt - 1)))


def payload(notification: Notification) -> dict[str, Any]:
    return {"notification_id": notification.key, **notification.alert}


@dataclass
class Webhook:
    """POST each notification as JSON; see the module docstring for the error policy."""

    url: str
    client: httpx.Client
    max_attempts: int = 5
    backoff_s: float = 0.5
    sleep: Callable[[float], None] = time.sleep

    def deliver(self, notification: Notification) -> int:
        """Deliver one notification; returns the attempts used, or raises a permanent
        :class:`WebhookError`."""
        body = json.dumps(payload(notification), sort_keys=True)
        headers = {"content-type": "application/json", "idempotency-key": notification.key}
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.client.post(self.url, content=body, headers=headers)
            except httpx.TransportError as error:
                reason = f"{type(error).__name__}: {error}"
            else:
                if response.is_success:
                    return attempt
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRYABLE and response.status_code < 500:
                    raise WebhookError(self.url, reason, permanent=True)
            if attempt < self.max_attempts:
                log.warning(
                    "webhook attempt %d for %s failed (%s); retrying", attempt, notification.key, reason
                )
                self.sleep(retry_delay(attempt, self.backoff_s))
        raise WebhookError(
            self.url, f"gave up after {self.max_attempts} attempts; last: {reason}", permanent=True
        )


def webhook_dead_letter(notification: Notification, error: WebhookError, now_ms: int) -> dict[str, Any]:
    message = notification.message
    return dead_letter(
        "alerts.webhook",
        DecodeFailure("delivery_failed", str(error)),
        topic=message.topic() or ALERTS_TOPIC,
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
        headers=message.headers(),
        now_ms=now_ms,
    )
