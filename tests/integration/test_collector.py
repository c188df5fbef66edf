"""The collector against the session's real Kafka broker and Apicurio registry: JSON in,
Avro out that the registry decodes; every kind of bad input with its status, its dead
letter and nothing accepted lost; a broker outage; uvicorn with two workers fed by the
simulator; and a fuzz run without a server error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from collector.app import create_app
from collector.client import CollectorClient
from collector.keys import KeyStore
from collector.testing import NotReady, batch, device_events, json_values, key_file, wait_ready
from reelpulse import stack, topics
from reelpulse.cli import app as cli
from reelpulse.contract import Contract, decode
from reelpulse.settings import Settings
from reelpulse.testing import decoded_records, free_port, plain

DEAD_LETTERS = "reelpulse.deadletter"


def event_id(record: dict[str, Any]) -> str:
    """The event id of a client event (in its envelope) or of a CDN log (at the top)."""
    return str(record.get("envelope", record).get("event_id"))


def ids_on_topics(settings: Settings, contract: Contract, names: set[str]) -> Counter[str]:
    """How often each event id is on the topics of the event types ``names``."""
    found: Counter[str] = Counter()
    for topic in sorted({contract[name].topic for name in names}):
        found.update(event_id(value) for _, value in decoded_records(settings, topic))
    return found


def dead_letters(settings: Settings, contract: Contract, client: str) -> list[dict[str, Any]]:
    """The collector's dead letters for requests of ``client``."""
    writer = contract["dead_letter"].parsed
    letters = (plain(decode(m.value(), writer)) for m in topics.read_topic(settings, DEAD_LETTERS))
    return [
        letter
        for letter in letters
        if {"key": "collector.client", "value": client.encode()} in letter["headers"]
    ]


class Service:
    def __init__(self, client: TestClient, key: str, name: str) -> None:
        self.client, self.key, self.name = client, key, name

    def post(self, body: Any = None, *, raw: bytes | None = None, key: str | None = None) -> httpx.Response:
        return self.client.post(
            "/v1/events",
            content=raw if raw is not None else orjson.dumps(body),
            headers={"Authorization": f"Bearer {key or self.key}", "Content-Type": "application/json"},
        )


def running(settings: Settings, schema_ids: dict[str, int], tmp: Path, name: str, **overrides: Any) -> Any:
    """A collector app on the session's stack with one client called ``name``."""
    path, key = key_file(tmp, name)
    collector_settings = settings.model_copy(update={"collector_keys_file": path, **overrides})
    app = create_app(collector_settings, schema_ids=schema_ids, keys=KeyStore(path))
    return TestClient(app), key


@pytest.fixture(scope="module")
def service(
    settings: Settings, schema_ids: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    client, key = running(settings, schema_ids, tmp_path_factory.mktemp("collector"), "it-devices")
    with client:
        yield Service(client, key, "it-devices")


def test_device_json_arrives_as_avro_the_registry_decodes(
    service: Service, settings: Settings, contract: Contract
) -> None:
    events = device_events(300, seed=31)
    for start in range(0, len(events), 100):
        response = service.post(batch(events[start : start + 100]))
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 100
    sent = {event_id(record): (name, record) for name, record in events}
    names = {name for name, _ in events}
    assert len(names) >= 10
    seen: Counter[str] = Counter()
    for topic in sorted({contract[name].topic for name in names}):
        for key, value in decoded_records(settings, topic):
            identity = event_id(value)
            if identity in sent:
                name, original = sent[identity]
                assert value == original
                assert key.decode() == contract[name].key_of(original)
                seen[identity] += 1
    assert seen == Counter(dict.fromkeys(sent, 1))


def test_every_kind_of_bad_input_gets_its_status_and_loses_nothing_accepted(
    settings: Settings, contract: Contract, schema_ids: dict[str, int], tmp_path: Path
) -> None:
    client, key = running(
        settings,
        schema_ids,
        tmp_path,
        "it-bad-input",
        collector_max_body_bytes=100_000,
        collector_max_batch_events=50,
        collector_rate_limit_events_per_s=0.01,
        collector_rate_limit_burst=50,
    )
    events = device_events(60, seed=32)
    good = [e for e in events if e[0] == "playback_heartbeat"][:4]
    heartbeat = good[0][1]
    with client:
        service = Service(client, key, "it-bad-input")
        malformed = service.post(raw=b'{"events": [{"type": "login"')
        mixed = service.post(
            {
                "events": [
                    *batch(good)["events"],
                    {"type": "no_such_event", "event": {}},
                    {
                        "type": "playback_heartbeat",
                        "event": {k: v for k, v in heartbeat.items() if k != "title_id"},
                    },
                    {"type": "playback_heartbeat", "event": {**heartbeat, "bitrate_kbps": "fast"}},
                    {
                        "type": "playback_heartbeat",
                        "event": {**heartbeat, "envelope": {**heartbeat["envelope"], "event_time": 0}},
                    },
                ]
            }
        )
        oversize = service.post(raw=b'{"events": [' + b" " * 100_001 + b"]}")
        wrong_key = service.post(batch(good), key="rp_0123456789ab_not-a-key")
        too_fast = service.post(batch(events[:50]))

    assert (malformed.status_code, malformed.json()["error"]) == (400, "malformed_json")
    assert mixed.status_code == 207
    results = mixed.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] * 4 + ["rejected"] * 4
    assert [(r["error_type"], r["field"]) for r in results[4:]] == [
        ("unknown_event_type", "type"),
        ("schema_violation", "title_id"),
        ("schema_violation", "bitrate_kbps"),
        ("clock_skew", "envelope.event_time"),
    ]
    assert (oversize.status_code, oversize.json()["error"]) == (413, "body_too_large")
    assert (wrong_key.status_code, wrong_key.json()["error"]) == (401, "unauthorized")
    assert (too_fast.status_code, too_fast.json()["error"]) == (429, "rate_limited")
    assert int(too_fast.headers["retry-after"]) >= 1

    on_topic = ids_on_topics(settings, contract, {"playback_heartbeat"})
    accepted = [event_id(record) for _, record in good]
    assert [on_topic[identity] for identity in accepted] == [1, 1, 1, 1]
    letters = dead_letters(settings, contract, "it-bad-input")
    assert sorted(letter["error_type"] for letter in letters) == [
        "clock_skew",
        "malformed_json",
        "schema_violation",
        "schema_violation",
        "unknown_event_type",
    ]
    by_type = {letter["error_type"]: letter for letter in letters}
    assert by_type["malformed_json"]["original_value"] == b'{"events": [{"type": "login"'
    assert orjson.loads(by_type["unknown_event_type"]["original_value"])["type"] == "no_such_event"
    assert all(letter["stage"] == "collector" and letter["source_topic"] is None for letter in letters)


def test_broker_down_is_503_and_nothing_accepted_goes_missing(
    settings: Settings, contract: Contract, schema_ids: dict[str, int], tmp_path: Path
) -> None:
    client, key = running(settings, schema_ids, tmp_path, "it-outage", collector_delivery_timeout_s=3.0)
    events = device_events(300, seed=33)
    first, during, after = events[:100], events[100:200], events[200:]
    reported: dict[str, str] = {}

    def post(service: Service, part: list[tuple[str, dict[str, Any]]]) -> httpx.Response:
        response = service.post(batch(part))
        for (_, record), result in zip(part, response.json()["results"], strict=True):
            reported[event_id(record)] = result["status"]
        return response

    with client:
        service = Service(client, key, "it-outage")
        assert post(service, first).status_code == 200
        stack.kill(stack.KAFKA, settings)
        try:
            down = post(service, during)
            readiness = client.get("/readyz")
        finally:
            stack.start(stack.KAFKA, settings)
        retry = CollectorClient("http://testserver", key, http=client, max_attempts=20)
        unaccepted = [(n, r) for n, r in during if reported[event_id(r)] == "not_accepted"]
        retry.produce_all(unaccepted + after)
        retry.flush()

    assert down.status_code == 503
    assert int(down.headers["retry-after"]) > 0
    assert down.json()["not_accepted"] > 0
    assert readiness.status_code == 503
    assert "not reachable" in readiness.json()["checks"]["kafka"]
    assert retry.stats.accepted == len(unaccepted) + len(after)
    on_topic = ids_on_topics(settings, contract, {name for name, _ in events})
    every_event = {event_id(record) for _, record in events}
    assert every_event <= set(on_topic), "every event is in Kafka after the retries"
    assert {eid for eid, status in reported.items() if status == "accepted"} <= set(on_topic)


def test_uvicorn_workers_take_the_simulators_traffic(
    settings: Settings, contract: Contract, schema_ids: dict[str, int], tmp_path: Path
) -> None:
    path, key = key_file(tmp_path, "it-simulator")
    port = free_port()
    env = {
        **os.environ,
        "REELPULSE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REELPULSE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "REELPULSE_STATE_DIR": str(settings.state_dir),
        "REELPULSE_COLLECTOR_KEYS_FILE": str(path),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    device_topics = sorted(
        {event.topic for event in contract if event.name not in ("title", "alert", "dead_letter")}
    )
    before = {s.name: s.messages for s in topics.topic_states(settings, device_topics)}
    command = [sys.executable, "-m", "reelpulse", "collector", "serve", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, server, timeout_s=30.0)
        except NotReady as error:
            server.terminate()
            raise AssertionError(f"{error}: {server.communicate(timeout=30)[0].decode()}") from error
        result = CliRunner().invoke(
            cli,
            [
                *("simulate", "--events", "3000", "--no-pace", "--duration", "60", "--seed", "34"),
                *("--truth", str(tmp_path / "truth.json"), "--via-collector", url, "--api-key", key),
            ],
            env={k: v for k, v in env.items() if k.startswith("REELPULSE_")},
        )
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode()
    assert result.exit_code == 0, result.output + output
    accepted = int(result.output.split("collector: ")[1].split(" accepted")[0].replace(",", ""))
    assert accepted == 3000
    after = {s.name: s.messages for s in topics.topic_states(settings, device_topics)}
    assert sum(after.values()) - sum(before.values()) == accepted
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("reelpulse_collector_events_accepted_total{")
    )
    assert total == accepted, "both workers' counts add up on /metrics"
    assert server.returncode == 0, output


JSON_VALUES = json_values(max_leaves=8)
FUZZ_EVENTS = batch(device_events(100, seed=35))["events"]


@st.composite
def fuzz_bodies(draw: st.DrawFn) -> bytes:
    """Any JSON, or real events with one field changed to any JSON value."""
    if draw(st.booleans()):
        return orjson.dumps(draw(JSON_VALUES))
    events = [dict(e) for e in draw(st.lists(st.sampled_from(FUZZ_EVENTS), min_size=1, max_size=4))]
    record = dict(events[0]["event"])
    record[draw(st.sampled_from([*record, "extra"]))] = draw(JSON_VALUES)
    return orjson.dumps({"events": [{**events[0], "event": record}, *events[1:]]})


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=fuzz_bodies())
def test_fuzz_against_real_kafka_never_a_server_error(service: Service, body: bytes) -> None:
    response = service.post(raw=body)
    assert response.status_code in {200, 207, 400, 413, 422}, response.text
