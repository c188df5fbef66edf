"""Produce through the API, read back with a plain confluent-kafka consumer and the
registry's Avro deserializer: what a consumer team would do with our topics."""

from __future__ import annotations

import pytest

from reelpulse import topics
from reelpulse.contract import Contract
from reelpulse.errors import SchemaViolation
from reelpulse.producer import DeliveryStats, EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import SimulationConfig, Simulator
from reelpulse.testing import decoded_records


@pytest.fixture(scope="module")
def produced(settings: Settings, contract: Contract, schema_ids: dict[str, int]) -> list[tuple[str, dict]]:
    simulator = Simulator(SimulationConfig(seed=11, users=80, titles=40, rate=400.0, duration_s=30.0))
    events = [("title", title) for title in simulator.catalog()] + list(simulator.events())
    with EventProducer(settings, contract, schema_ids=schema_ids) as producer:
        producer.produce_all(events)
    assert producer.stats.acked == len(events)
    return events


def identity(record: dict) -> str:
    """The event id of a client event or CDN log; the title id of a catalog record."""
    envelope = record.get("envelope", record)
    return str(envelope.get("event_id") or envelope["title_id"])


def test_every_event_type_decodes_with_a_plain_consumer(
    settings: Settings, contract: Contract, produced: list[tuple[str, dict]]
) -> None:
    produced_types = {event_type for event_type, _ in produced}
    assert produced_types == {e.name for e in contract} - {"alert", "dead_letter"}
    for topic in sorted({contract[name].topic for name in produced_types}):
        sent = {identity(r): (n, r) for n, r in produced if contract[n].topic == topic}
        received: dict[str, list[tuple[bytes, dict]]] = {}
        for key, value in decoded_records(settings, topic):
            received.setdefault(identity(value), []).append((key, value))
        assert set(sent) <= set(received), topic
        for record_id, (name, original) in sent.items():
            expected_key = contract[name].key_of(original).encode()
            assert (expected_key, original) in received[record_id], record_id
            if topic != contract["title"].topic:  # catalog ids repeat across simulations
                assert len(received[record_id]) == 1, record_id


def test_keys_keep_a_playback_session_in_one_partition(settings: Settings, produced: list) -> None:
    partitions_by_session: dict[bytes, set[int]] = {}
    for message in topics.read_topic(settings, "reelpulse.playback"):
        partitions_by_session.setdefault(message.key(), set()).add(message.partition())
    sessions = {r["envelope"]["session_id"].encode() for n, r in produced if n.startswith("playback")}
    assert sessions <= set(partitions_by_session)
    assert {s: p for s, p in partitions_by_session.items() if len(p) != 1} == {}


def test_invalid_event_is_refused_before_sending(
    settings: Settings, contract: Contract, schema_ids: dict[str, int], produced: list
) -> None:
    name, record = next((n, r) for n, r in produced if n == "playback_heartbeat")
    broken = {**record, "bitrate_kbps": 2.5}
    producer = EventProducer(settings, contract, schema_ids=schema_ids)
    with pytest.raises(SchemaViolation, match="playback_heartbeat event: field 'bitrate_kbps'"):
        producer.produce(name, broken)
    producer.flush()
    assert producer.stats == DeliveryStats()
