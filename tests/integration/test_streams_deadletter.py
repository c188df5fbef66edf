"""Bad input of every kind reaches reelpulse.deadletter with its original bytes, headers,
coordinates and reason while the worker keeps processing; the live page renders the
worker's metrics in headless Chromium; healthy traffic raises no alert."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from reelpulse.contract import Contract, encode
from reelpulse.producer import EventProducer
from reelpulse.settings import PROJECT_ROOT, Settings
from reelpulse.simulator import SimulationConfig, Simulator
from streams.testing import WorkerProcess, end_offsets, fast_rules_file, read_since

SOURCES = ["reelpulse.playback", "reelpulse.cdn", "reelpulse.auth"]
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
)  # fmt: skip


@pytest.fixture(scope="module")
def worker(
    settings: Settings, schema_ids: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    workdir = tmp_path_factory.mktemp("streams-dlq")
    process = WorkerProcess(settings, workdir, "dlq-test", fast_rules_file(workdir / "rules.toml"))
    try:
        yield process.start()
    finally:
        process.stop()


def traffic(seconds: float, seed: int, rate: float = 1500.0) -> list[tuple[str, dict]]:
    now = int(time.time() * 1000)
    config = SimulationConfig(
        seed=seed, start_ms=now - int(seconds * 1000), users=6000, rate=rate, duration_s=seconds
    )
    return list(Simulator(config).events())


def produce(
    settings: Settings, contract: Contract, ids: dict[str, int], events: list[tuple[str, dict]]
) -> None:
    with EventProducer(settings, contract, schema_ids=ids, validate=False) as producer:
        producer.produce_all(events)


def test_every_kind_of_bad_input_is_dead_lettered(
    worker: WorkerProcess, settings: Settings, contract: Contract, schema_ids: dict[str, int]
) -> None:
    before = end_offsets(settings, ["reelpulse.deadletter"])
    events = traffic(20.0, seed=51)
    produce(settings, contract, schema_ids, events)
    start = next(record for name, record in events if name == "playback_start")
    start_id, start_type = schema_ids["playback_start"], contract["playback_start"].parsed
    good = encode(start_id, start_type, start)
    future, past = copy.deepcopy(start), copy.deepcopy(start)
    future["envelope"]["event_time"] = int(time.time() * 1000) + 2 * 86_400_000
    past["envelope"]["event_time"] = int(time.time() * 1000) - 10 * 86_400_000
    bad = {
        "undecodable": b'{"not": "avro"}',
        "unknown_schema_id": b"\x00\x00\x0f\x42\x3f" + good[5:],
        "unexpected_event_type": good[:1] + schema_ids["login"].to_bytes(4, "big") + good[5:],
        "schema_violation": good[:-4],
        "out_of_range_time": encode(start_id, start_type, future),
    }
    producer = Producer(settings.kafka_client_config())
    for kind, value in bad.items():
        producer.produce("reelpulse.playback", value, key=kind.encode(), headers=[("origin", kind.encode())])
    producer.produce("reelpulse.playback", encode(start_id, start_type, past), key=b"out_of_range_past")
    producer.flush(30)
    after = traffic(5.0, seed=52)  # good events after the bad ones are still processed
    produce(settings, contract, schema_ids, after)

    worker.wait_caught_up(end_offsets(settings, SOURCES), timeout_s=120)
    assert worker.alive()
    dead = [record for _, record in read_since(settings, contract, before)]
    by_key = {d["original_key"]: d for d in dead}
    for kind, value in bad.items():
        letter = by_key[kind.encode()]
        assert letter["error_type"] == kind, letter["reason"]
        assert letter["original_value"] == value
        assert letter["headers"] == [{"key": "origin", "value": kind.encode()}]
        assert letter["source_topic"] == "reelpulse.playback"
        assert letter["source_offset"] >= 0
        assert letter["stage"] == "streams.monitors"
        assert letter["reason"]
    assert by_key[b"out_of_range_past"]["error_type"] == "out_of_range_time"
    counts = worker.status()["counters"]
    assert counts["dead_letters"]["out_of_range_time"] == 2
    assert sum(counts["dead_letters"].values()) == len(bad) + 1
    assert counts["processed"]["playback_start"] >= sum(n == "playback_start" for n, _ in events + after)


def test_healthy_traffic_raises_no_alert(
    worker: WorkerProcess, settings: Settings, contract: Contract, schema_ids: dict[str, int]
) -> None:
    fired_before = worker.status()["counters"]["fired"]
    produce(settings, contract, schema_ids, traffic(240.0, seed=53, rate=1800.0))
    status = worker.wait_caught_up(end_offsets(settings, SOURCES), timeout_s=240)
    assert status["counters"]["fired"] == fired_before == 0
    assert worker.rows("alerts") == []


def test_live_page_renders_metrics_in_headless_chromium(worker: WorkerProcess, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed: apt-get install -y chromium (see .ci/run)"
    base = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=8000",
    ]
    dom = subprocess.run(
        [*base, "--dump-dom", worker.url + "/"], capture_output=True, text=True, timeout=90
    ).stdout
    updated = dom.split('id="updated">', 1)[1].split("<", 1)[0]
    assert re.fullmatch(r"\d\d:\d\d:\d\d", updated), f"the page fetched /api/metrics: {updated!r}"
    processed = dom.split('id="processed">', 1)[1].split("<", 1)[0]
    assert int(processed.replace(",", "")) > 0
    sps = dom.split('id="sps-now">', 1)[1].split("<", 1)[0]
    assert sps.isdigit()
    assert "<polyline" in dom, "the stream-starts chart is drawn"
    edges = dom.split('id="edges"', 1)[1].split("</table>", 1)[0]
    assert edges.count("<tr>") >= 5, "playback quality by edge has rows"
    assert "edge-" in edges
    shot = PROJECT_ROOT / "artifacts" / "streams" / "live.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1400,1000", worker.url + "/"],
        capture_output=True, timeout=90, check=False,
    )  # fmt: skip
