"""The decoding, dead-letter, processing and alerting path of streams/ without services: a
fake registry, a dict store, simulator traffic with injected incidents."""

from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest

from reelpulse.contract import Contract, encode
from reelpulse.settings import Settings
from reelpulse.simulator import Incident, SimulationConfig, Simulator
from streams.alerts import Fence
from streams.codec import AvroCodec, WireDecoder
from streams.config import DEFAULT_RULES, parse_rules
from streams.errors import DecodeFailure
from streams.pipeline import Pipeline
from streams.processor import MemoryStore, Processor

START_MS = 1_767_225_600_000  # 2026-01-01


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(Settings().schemas_dir)


@pytest.fixture(scope="module")
def ids(contract: Contract) -> dict[str, int]:
    return {name: 100 + i for i, name in enumerate(sorted(contract.events))}


class FakeRegistry:
    def __init__(self, contract: Contract, ids: dict[str, int]) -> None:
        self.schemas = {schema_id: contract[name].schema_json for name, schema_id in ids.items()}
        self.calls = 0

    def __call__(self, schema_id: int) -> str | None:
        self.calls += 1
        return self.schemas.get(schema_id)


@pytest.fixture
def registry(contract: Contract, ids: dict[str, int]) -> FakeRegistry:
    return FakeRegistry(contract, ids)


def heartbeat(contract: Contract) -> dict[str, Any]:
    sim = Simulator(SimulationConfig(seed=5, start_ms=START_MS, users=50, duration_s=30.0))
    return next(r for name, r in sim.events() if name == "playback_heartbeat")


# --------------------------------------------------------------------------- codec


def test_decoder_reads_records_and_caches_schema_ids(
    contract: Contract, ids: dict, registry: FakeRegistry
) -> None:
    record = heartbeat(contract)
    value = encode(ids["playback_heartbeat"], contract["playback_heartbeat"].parsed, record)
    decoder = WireDecoder(contract, registry, ["reelpulse.playback"])
    for _ in range(3):
        name, decoded = decoder.decode(value)
    assert name == "playback_heartbeat"
    assert decoded["envelope"]["event_time"] == record["envelope"]["event_time"], "timestamps stay epoch ms"
    assert decoded["envelope"]["event_id"] == record["envelope"]["event_id"], "uuids stay strings"
    assert registry.calls == 1


def test_older_and_newer_writers_decode_with_the_contract_as_reader(
    contract: Contract, registry: FakeRegistry
) -> None:
    current = json.loads(contract["cdn_request"].schema_json)
    older = copy.deepcopy(current)
    older["fields"] = [f for f in older["fields"] if f["name"] != "title_id"]
    newer = copy.deepcopy(current)
    newer["fields"].append({"name": "tls_version", "type": ["null", "string"], "default": None})
    registry.schemas.update({901: json.dumps(older), 902: json.dumps(newer)})
    decoder = WireDecoder(contract, registry)
    record = {
        "event_id": "0d3c1a58-64cc-4a55-9ed3-3bd1d61b9a65",
        "event_time": START_MS,
        "edge_id": "edge-1",
        "pop": "iad",
        "cache_status": "HIT",
        "bytes_sent": 10,
        "http_status": 200,
        "latency_ms": 5,
        "client_region": "US",
        "client_ip": "10.0.0.1",
        "session_id": None,
    }
    import fastavro

    old_value = encode(901, fastavro.parse_schema(older), record)
    new_value = encode(902, fastavro.parse_schema(newer), {**record, "title_id": "t1", "tls_version": "1.3"})
    assert decoder.decode(old_value)[1]["title_id"] is None, (
        "field missing in the old writer gets its default"
    )
    assert "tls_version" not in decoder.decode(new_value)[1], "the reader schema drops newer fields"


@pytest.mark.parametrize(
    ("value", "error_type"),
    [
        (b"", "undecodable"),
        (b"\x00\x00", "undecodable"),
        (b"\x01\x00\x00\x00\x65hello", "undecodable"),
        (b"\x00\x00\x00\x27\x0fhello", "unknown_schema_id"),
        (None, "undecodable"),
    ],
)
def test_decoder_classifies_bad_bytes(
    contract: Contract, registry: FakeRegistry, value: Any, error_type: str
) -> None:
    with pytest.raises(DecodeFailure) as failure:
        WireDecoder(contract, registry).decode(value)
    assert failure.value.error_type == error_type


def test_decoder_classifies_schema_violations(contract: Contract, ids: dict, registry: FakeRegistry) -> None:
    record = heartbeat(contract)
    good = encode(ids["playback_heartbeat"], contract["playback_heartbeat"].parsed, record)
    decoder = WireDecoder(contract, registry, ["reelpulse.playback"])
    for bad in (good[:-7], good + b"\x02junk"):
        with pytest.raises(DecodeFailure) as failure:
            decoder.decode(bad)
        assert failure.value.error_type == "schema_violation"
        assert failure.value.schema_id == ids["playback_heartbeat"]
    login_id = ids["login"]
    with pytest.raises(DecodeFailure) as failure:
        decoder.decode(good[:1] + login_id.to_bytes(4, "big") + good[5:])
    assert failure.value.error_type == "unexpected_event_type"
    everywhere = WireDecoder(contract, registry)
    with pytest.raises(DecodeFailure) as failure:
        everywhere.decode(good, "reelpulse.auth")
    assert failure.value.error_type == "unexpected_event_type", "a playback event on the auth topic"


def test_unknown_ids_are_not_asked_again_at_once(contract: Contract, registry: FakeRegistry) -> None:
    decoder = WireDecoder(contract, registry)
    for _ in range(5):
        with pytest.raises(DecodeFailure):
            decoder.decode(b"\x00\x00\x00\x27\x0fbody")
    assert registry.calls == 1


def test_faust_codec_round_trips(contract: Contract, ids: dict, registry: FakeRegistry) -> None:
    record = heartbeat(contract)
    codec = AvroCodec(
        WireDecoder(contract, registry), contract["playback_heartbeat"], ids["playback_heartbeat"]
    )
    assert codec.loads(codec.dumps(record)) == record


# --------------------------------------------------------------------------- pipeline and processor


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list = field(default_factory=list)


def fast_rules(**windows: Any) -> Any:
    data = tomllib.loads(DEFAULT_RULES.read_text())
    data["windows"].update({"quality_s": 10, "grace_s": 2, "retain": 100, "idle_partition_s": 1e9, **windows})
    for rule in data["rules"]:
        if rule["monitor"] == "starts":
            rule["warmup_s"] = 30
    return parse_rules(data)


class Harness:
    """A pipeline over a dict store, fed with simulator traffic as Kafka would deliver it."""

    def __init__(self, contract: Contract, ids: dict, registry: FakeRegistry, now_ms: int) -> None:
        self.contract, self.ids, self.store = contract, ids, MemoryStore()
        self.alerts: list[dict] = []
        self.dead: list[dict] = []
        self.fence = Fence()
        self.decoder = WireDecoder(contract, registry)
        self.now = now_ms
        self.offsets: dict[tuple[str, int], int] = {}
        self.restart()

    def restart(self) -> None:
        self.processor = Processor(fast_rules(), self.store, 3, now_ms=lambda: self.now)
        self.processor.load()
        self.pipeline = Pipeline(
            self.processor, self.decoder, self.fence, self.alerts.append, self.dead.append
        )

    def messages(self, events: list[tuple[str, dict]]) -> list[Msg]:
        out = []
        for name, record in events:
            event = self.contract[name]
            key = event.key_of(record).encode()
            partition = hash(key) % 3
            offset = self.offsets.get((event.topic, partition), 0)
            self.offsets[(event.topic, partition)] = offset + 1
            out.append(Msg(event.topic, partition, offset, key, encode(self.ids[name], event.parsed, record)))
        return out

    def feed(self, messages: list[Msg], batch: int = 500) -> None:
        for i in range(0, len(messages), batch):
            self.pipeline.handle(messages[i : i + batch])


def traffic(
    incidents: tuple[Incident, ...] = (), seconds: float = 120.0
) -> tuple[Simulator, list[tuple[str, dict]]]:
    sim = Simulator(
        SimulationConfig(
            seed=21, start_ms=START_MS, users=4000, rate=1500, duration_s=seconds, incidents=incidents
        )
    )
    return sim, list(sim.events())


@pytest.mark.slow
def test_incidents_fire_on_their_targets_and_resolve(
    contract: Contract, ids: dict, registry: FakeRegistry
) -> None:
    incidents = (
        Incident("edge_outage", 40, 25),
        Incident("login_attack", 45, 20),
        Incident("play_failure_spike", 50, 25, "country=BR"),
    )
    sim, events = traffic(incidents, seconds=100.0)
    harness = Harness(contract, ids, registry, START_MS + 200_000)
    harness.feed(harness.messages(events))
    truth = {i["kind"]: i for i in sim.truth.incidents}
    firing = [a for a in harness.alerts if a["status"] == "FIRING"]
    resolved = {a["alert_id"] for a in harness.alerts if a["status"] == "RESOLVED"}
    edge = truth["edge_outage"]
    edge_alerts = [a for a in firing if a["entity"] == edge["target"]]
    assert {a["rule"] for a in edge_alerts} >= {"edge_play_failures", "edge_http_errors"}
    for alert in edge_alerts:
        assert edge["start_ms"] <= alert["first_seen"] <= edge["start_ms"] + 10_000 + 30_000
    ips = set(truth["login_attack"]["details"]["source_ips"])
    assert {a["entity"] for a in firing if a["rule"] == "credential_stuffing"} == ips
    assert any(a["entity"] == "BR" and a["rule"] == "country_play_failures" for a in firing)
    assert {a["alert_id"] for a in firing} == resolved, "every alert resolves after its incident ends"
    assert harness.dead == []


@pytest.mark.slow
def test_healthy_traffic_raises_no_alert(contract: Contract, ids: dict, registry: FakeRegistry) -> None:
    _, events = traffic(seconds=180.0)
    harness = Harness(contract, ids, registry, START_MS + 300_000)
    harness.feed(harness.messages(events))
    assert harness.alerts == []
    assert harness.processor.counters.processed["playback_start"] > 1000


@pytest.mark.slow
def test_replay_after_restart_counts_each_event_once(
    contract: Contract, ids: dict, registry: FakeRegistry
) -> None:
    sim, events = traffic((Incident("edge_outage", 20, 20),), seconds=60.0)
    harness = Harness(contract, ids, registry, START_MS + 100_000)
    messages = harness.messages(events)
    cut = len(messages) // 2
    harness.feed(messages[:cut])
    harness.processor.flush()
    harness.feed(messages[cut : cut + 3000])  # processed, never flushed: lost in the crash
    harness.restart()
    harness.feed(messages[cut - 5000 :])  # the group resumes from an older committed offset
    harness.processor.flush()
    once = Harness(contract, ids, registry, START_MS + 100_000)
    once.feed(messages)
    once.processor.flush()
    assert harness.store.tables["quality"] == once.store.tables["quality"]
    assert harness.store.tables["starts"] == once.store.tables["starts"]
    starts = sum(v["starts"] for k, v in harness.store.tables["quality"].items() if "|cdn_edge|" in k)
    assert starts == sim.truth.counts["playback_start"]
    notifications = [(a["alert_id"], a["status"]) for a in harness.alerts]
    assert len(notifications) == len(set(notifications)), "the fence keeps replays from notifying twice"
    assert harness.processor.counters.duplicates > 0


def test_bad_input_becomes_dead_letters_with_coordinates(
    contract: Contract, ids: dict, registry: FakeRegistry
) -> None:
    _, events = traffic(seconds=20.0)
    harness = Harness(contract, ids, registry, START_MS + 30_000)
    messages = harness.messages(events)
    good = messages[0]
    future = copy.deepcopy(events[0][1])
    future["envelope"]["event_time"] = harness.now + 3 * 86_400_000
    bad = [
        Msg("reelpulse.playback", 1, 10_001, b"k", b"\xff\xfe", [("trace", b"1")]),
        Msg("reelpulse.playback", 1, 10_002, b"k", b"\x00\x00\x01\x86\xa0body"),
        Msg("reelpulse.playback", 1, 10_003, b"k", good.value[:-3] if good.value else None),
        Msg(
            "reelpulse.playback",
            1,
            10_004,
            b"k",
            encode(ids[events[0][0]], contract[events[0][0]].parsed, future),
        ),
    ]
    harness.feed(messages + bad)
    kinds = [d["error_type"] for d in harness.dead]
    assert kinds == ["undecodable", "unknown_schema_id", "schema_violation", "out_of_range_time"]
    first = harness.dead[0]
    assert (first["source_topic"], first["source_partition"], first["source_offset"]) == (
        "reelpulse.playback",
        1,
        10_001,
    )
    assert first["original_value"] == b"\xff\xfe"
    assert first["headers"] == [{"key": "trace", "value": b"1"}]
    assert harness.processor.counters.dead_letters == {
        "undecodable": 1,
        "unknown_schema_id": 1,
        "schema_violation": 1,
        "out_of_range_time": 1,
    }
    contract["dead_letter"].check(first)
    past = copy.deepcopy(events[0][1])
    past["envelope"]["event_time"] = START_MS - 10 * 86_400_000
    harness.feed(
        [
            Msg(
                "reelpulse.playback",
                2,
                10_005,
                b"k",
                encode(ids[events[0][0]], contract[events[0][0]].parsed, past),
            )
        ]
    )
    assert harness.dead[-1]["error_type"] == "out_of_range_time"
    assert "behind the watermark" in harness.dead[-1]["reason"]


def test_an_unreachable_registry_is_an_error_not_a_dead_letter(contract: Contract) -> None:
    from types import SimpleNamespace

    from reelpulse.errors import RegistryError
    from streams.codec import registry_fetcher

    def refuse(schema_id: int) -> None:
        raise ConnectionError("connection refused")

    decoder = WireDecoder(contract, registry_fetcher(SimpleNamespace(get_schema=refuse)))  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="connection refused"):
        decoder.decode(b"\x00\x00\x00\x00\x07body")


def test_stream_starts_drop_against_the_learned_baseline() -> None:
    from streams.processor import Incoming

    processor = Processor(fast_rules(), MemoryStore(), 3, now_ms=lambda: START_MS + 10**7)
    processor.load()
    notes = []
    offset = 0

    def second(t: int, starts: int) -> None:
        nonlocal offset
        batch = []
        for i in range(starts):
            offset += 1
            record = {
                "envelope": {"event_time": t + i, "country": "US", "session_id": f"s{offset}",
                             "device": {"device_type": "TV"}},
                "title_id": "t1", "cdn_edge": "edge-1", "success": True, "startup_time_ms": 900,
            }  # fmt: skip
            batch.append(Incoming("reelpulse.playback", offset % 3, offset, "playback_start", record, t + i))
        notes.extend(alert for _, alert in processor.apply(batch))

    t = START_MS
    for rate in [50] * 120 + [10] * 30 + [50] * 60:
        second(t, rate)
        t += 1000
    drops = [a for a in notes if a["rule"] == "stream_starts_drop"]
    assert [a["status"] for a in drops] == ["FIRING", "RESOLVED"]
    fired, resolved = drops
    assert START_MS + 120_000 <= fired["first_seen"] <= START_MS + 130_000
    assert fired["baseline"] == pytest.approx(50, rel=0.1)
    assert fired["observed"] < 35
    assert resolved["alert_id"] == fired["alert_id"]
    assert resolved["first_seen"] == fired["first_seen"]
