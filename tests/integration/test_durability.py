"""SIGKILL the broker while the producer is sending: after a restart every event the
producer saw acknowledged is in the topic exactly once (idempotent producer, acks=all)."""

from __future__ import annotations

from collections import Counter

from confluent_kafka import Message

from reelpulse import stack, topics
from reelpulse.contract import Contract, decode
from reelpulse.errors import DeliveryError
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import SimulationConfig, Simulator

TOPIC = "reelpulse.playback"


def event_id(message: Message, writers: dict[int, object]) -> str | None:
    """The event id of one of the contract's events; None for anything else on the topic."""
    value = message.value() or b""
    writer = writers.get(int.from_bytes(value[1:5], "big")) if value[:1] == b"\x00" else None
    return str(decode(value, writer)["envelope"]["event_id"]) if writer else None


def read_event_ids(settings: Settings, writers: dict[int, object]) -> Counter[str]:
    """How often each event id is in the playback topic."""
    ids = (event_id(message, writers) for message in topics.read_topic(settings, TOPIC))
    return Counter(i for i in ids if i is not None)


def test_broker_sigkill_loses_and_duplicates_nothing_acknowledged(
    settings: Settings, contract: Contract, schema_ids: dict[str, int]
) -> None:
    writers = {schema_id: contract[name].parsed for name, schema_id in schema_ids.items()}
    before = read_event_ids(settings, writers)
    simulator = Simulator(SimulationConfig(seed=99, users=300, titles=60, rate=3000.0, duration_s=30.0))
    events = [(n, r) for n, r in simulator.events() if contract[n].topic == TOPIC]
    kill_at, restart_at = len(events) // 3, 2 * len(events) // 3
    acked: list[str] = []
    acked_before_kill = 0

    def delivered(failure: DeliveryError | None, message: Message) -> None:
        if failure is None:
            acked.append(str(event_id(message, writers)))

    with EventProducer(settings, contract, schema_ids=schema_ids, on_delivery=delivered) as producer:
        for index, (name, record) in enumerate(events):
            if index == kill_at:
                producer.poll(0.5)
                acked_before_kill = len(acked)
                stack.kill(stack.KAFKA, settings)
            if index == restart_at:
                stack.start(stack.KAFKA, settings)
            producer.produce(name, record)
        producer.flush(180)

    assert 0 < acked_before_kill < kill_at + 1, "the kill lands while events are in flight"
    after = read_event_ids(settings, writers) - before
    assert sorted(acked) == sorted(r["envelope"]["event_id"] for _, r in events)
    assert set(after) == set(acked)
    assert [eid for eid, n in after.items() if n != 1] == []
