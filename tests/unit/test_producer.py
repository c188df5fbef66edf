"""The producer's own logic, with the Kafka client replaced by a recording fake:
backpressure when the local buffer is full, failures surfaced, invalid events refused."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError

from reelpulse import producer as producer_module
from reelpulse.contract import Contract, split_wire
from reelpulse.errors import DeliveryError, SchemaViolation
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings

from .test_contract import heartbeat

CONTRACT = Contract(Settings().schemas_dir)
IDS = {event.name: number for number, event in enumerate(CONTRACT, start=1)}


class FakeMessage:
    def __init__(self, topic: str, value: bytes, key: bytes) -> None:
        self._topic, self._value, self._key = topic, value, key

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


class FakeKafka:
    """Accepts ``capacity`` records, then raises BufferError until polled; fails
    deliveries whose key is in ``failing_keys``."""

    def __init__(
        self, config: dict[str, Any], capacity: int = 2, failing_keys: tuple[bytes, ...] = ()
    ) -> None:
        self.config, self.capacity, self.failing_keys = config, capacity, failing_keys
        self.queued: list[tuple[FakeMessage, Any]] = []
        self.sent: list[FakeMessage] = []
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        if len(self.queued) >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queued.append((FakeMessage(topic, value, key), on_delivery))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        served, self.queued = self.queued, []
        for message, callback in served:
            error = KafkaError(KafkaError._MSG_TIMED_OUT) if message.key() in self.failing_keys else None
            callback(error, message)
            self.sent.append(message)
        return len(served)

    def flush(self, timeout: float) -> int:
        self.poll(timeout)
        return 0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKafka:
    kafka = FakeKafka({})
    monkeypatch.setattr(producer_module, "Producer", lambda config: kafka.__init__(config) or kafka)
    return kafka


def records(count: int) -> list[dict]:
    out = []
    for number in range(count):
        record = heartbeat(position_ms=number)
        record["envelope"] = {**record["envelope"], "session_id": f"00000000-0000-0000-0000-{number:012d}"}
        out.append(record)
    return out


def test_a_full_buffer_blocks_and_polls_instead_of_dropping(fake: FakeKafka) -> None:
    producer = EventProducer(Settings(), CONTRACT, schema_ids=IDS)
    producer.produce_all(("playback_heartbeat", record) for record in records(7))
    producer.flush()
    assert len(fake.sent) == 7
    assert fake.polls >= 3
    assert producer.stats.acked == 7
    assert {split_wire(m.value())[0] for m in fake.sent} == {IDS["playback_heartbeat"]}


def test_the_client_is_idempotent_and_waits_for_all_replicas(fake: FakeKafka) -> None:
    EventProducer(Settings(), CONTRACT, schema_ids=IDS, config={"linger.ms": 5})
    assert fake.config["enable.idempotence"] is True
    assert fake.config["acks"] == "all"
    assert fake.config["linger.ms"] == 5


def test_failed_deliveries_reach_the_callback_and_flush_raises(fake: FakeKafka) -> None:
    batch = records(3)
    seen: list[DeliveryError | None] = []
    producer = EventProducer(Settings(), CONTRACT, schema_ids=IDS, on_delivery=lambda f, m: seen.append(f))
    fake.failing_keys = (CONTRACT["playback_heartbeat"].key_of(batch[1]).encode(),)
    producer.produce_all(("playback_heartbeat", record) for record in batch)
    with pytest.raises(DeliveryError, match=r"reelpulse\.playback .*1 failed deliveries"):
        producer.flush()
    assert [failure is None for failure in seen] == [True, False, True]
    assert (producer.stats.acked, producer.stats.failed) == (2, 1)


def test_an_invalid_event_is_never_enqueued(fake: FakeKafka) -> None:
    producer = EventProducer(Settings(), CONTRACT, schema_ids=IDS)
    with pytest.raises(SchemaViolation, match="field 'rebuffer_ms'"):
        producer.produce("playback_heartbeat", heartbeat(rebuffer_ms="lots"))
    assert fake.queued == []
    assert fake.sent == []
