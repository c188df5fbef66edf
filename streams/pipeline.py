"""From consumed records to state, alerts and dead letters: decode each record, route what
cannot be accepted to the dead-letter sink, fold the rest into the :class:`Processor`
and pass new notifications through the :class:`Fence` to the alert sink.

Error policy (one per record, never a silent skip): bytes that are not the wire format,
an unknown schema id, a schema id of another topic's event type, a body that does not
decode, and an event time too far from the wall clock or the watermark each become one
``dead_letter`` record (original key, value, headers and coordinates, plus the reason)
and a count in the metrics; the worker goes on with the next record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from streams.alerts import Fence
from streams.codec import WireDecoder
from streams.deadletter import dead_letter
from streams.errors import DecodeFailure
from streams.processor import Incoming, Processor, event_time_of

log = logging.getLogger("streams")
STAGE = "streams.monitors"


class Consumed(Protocol):
    """What a consumed Kafka record offers (a Faust ``Message`` does)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


class Pipeline:
    def __init__(
        self,
        processor: Processor,
        decoder: WireDecoder,
        fence: Fence,
        send_alert: Callable[[dict[str, Any]], None],
        send_dead_letter: Callable[[dict[str, Any]], None],
    ) -> None:
        self.processor, self.decoder, self.fence = processor, decoder, fence
        self.send_alert, self.send_dead_letter = send_alert, send_dead_letter
        self.positions: dict[tuple[str, int], int] = {}  # next offset to read, per partition
        self.first_batch_at: float | None = None  # wall clock, for throughput measurements
        self.last_batch_at: float | None = None

    def handle(self, messages: Iterable[Consumed]) -> int:
        """Process a batch; returns how many notifications were sent."""
        good: list[Incoming] = []
        decode = self.decoder.decode
        positions = self.positions
        earliest, latest = self.processor.time_limits()
        self.first_batch_at = self.first_batch_at or time.time()
        for message in messages:
            positions[(message.topic, message.partition)] = message.offset + 1
            try:
                event_type, record = decode(message.value, message.topic)
                t = event_time_of(record)
                if t < earliest or t > latest:
                    raise self._out_of_range(t, message.value)
            except DecodeFailure as failure:
                self._dead_letter(message, failure)
                continue
            good.append(Incoming(message.topic, message.partition, message.offset, event_type, record, t))
        sent = 0
        for _rule, alert in self.processor.apply(good):
            if self.fence.admit(alert):
                self.send_alert(alert)
                sent += 1
                log.info("alert %s %s: %s", alert["status"], alert["alert_id"], alert["message"])
            else:
                self.processor.counters.suppressed += 1
        self.last_batch_at = time.time()
        return sent

    def _out_of_range(self, event_time: int, value: bytes | None) -> DecodeFailure:
        problem = self.processor.time_problem(event_time) or f"event_time {event_time} is out of range"
        schema_id = int.from_bytes(value[1:5], "big") if value else None
        return DecodeFailure("out_of_range_time", problem, schema_id)

    def _dead_letter(self, message: Consumed, failure: DecodeFailure) -> None:
        counts = self.processor.counters.dead_letters
        counts[failure.error_type] = counts.get(failure.error_type, 0) + 1
        log.warning(
            "dead letter from %s[%s]@%s: %s", message.topic, message.partition, message.offset, failure
        )
        self.send_dead_letter(
            dead_letter(
                STAGE,
                failure,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
                headers=message.headers,
                now_ms=self.processor.now_ms(),
            )
        )
