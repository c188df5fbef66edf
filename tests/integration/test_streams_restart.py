"""SIGKILL a worker mid-stream and start it again: the tables it restores from its
changelogs and then catches up on hold exactly the simulator's counts (each event once,
though Kafka delivers some twice), and no alert is notified twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import Incident, SimulationConfig, Simulator
from streams.testing import WorkerProcess, committed_offsets, end_offsets, fast_rules_file, read_since

SOURCES = ["reelpulse.playback", "reelpulse.cdn", "reelpulse.auth"]
WINDOW_MS = 10_000
RATE = 2000.0
SECONDS = 60.0


def expected_counts(events: list[tuple[str, dict]]) -> tuple[Counter, Counter, Counter]:
    """Ground truth per (entity, window): starts per edge, CDN requests per edge, sign-in
    attempts per source IP."""
    starts: Counter = Counter()
    requests: Counter = Counter()
    attempts: Counter = Counter()
    for name, record in events:
        if name == "playback_start":
            t = record["envelope"]["event_time"]
            starts[(record["cdn_edge"], t - t % WINDOW_MS)] += 1
        elif name == "cdn_request":
            requests[(record["edge_id"], record["event_time"] - record["event_time"] % WINDOW_MS)] += 1
        elif name == "login":
            t = record["envelope"]["event_time"]
            attempts[(record["envelope"]["client_ip"], t - t % WINDOW_MS)] += 1
    return starts, requests, attempts


def table_counts(worker: WorkerProcess, table: str, entity_type: str, field: str) -> Counter:
    return Counter(
        {
            (r["entity"], r["window_start"]): r[field]
            for r in worker.rows(table)
            if r["entity_type"] == entity_type
        }
    )


def produce(settings: Settings, contract: Contract, ids: dict, events: list, per_s: float) -> None:
    started = time.monotonic()
    with EventProducer(settings, contract, schema_ids=ids, validate=False) as producer:
        for i, (name, record) in enumerate(events):
            producer.produce(name, record)
            if i % 1000 == 0:
                ahead = i / per_s - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)


def test_sigkill_mid_stream_keeps_counts_exact_and_alerts_single(
    settings: Settings, contract: Contract, schema_ids: dict[str, int], tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    config = SimulationConfig(
        seed=41, start_ms=now - int(SECONDS * 1000), users=10_000, rate=RATE, duration_s=SECONDS,
        incidents=(Incident("edge_outage", 15, 20),),
    )  # fmt: skip
    simulator = Simulator(config)
    events = list(simulator.events())
    rules = fast_rules_file(tmp_path / "rules.toml")
    worker = WorkerProcess(settings, tmp_path, "restart-test", rules)
    alerts_since = end_offsets(settings, ["reelpulse.alerts"])
    producer = threading.Thread(target=produce, args=(settings, contract, schema_ids, events, 8000.0))
    try:
        worker.start()
        producer.start()
        third = len(events) // 3
        before = worker.wait(lambda s: sum(s["counters"]["processed"].values()) > third, 120, "a third in")
        worker.kill()
        assert not worker.alive()
        committed = committed_offsets(settings, worker.app_id, SOURCES)
        reread = sum(read - max(committed[tp], 0) for tp, read in before["positions"].items())
        assert reread > 0, "the restarted worker reads again what the killed one had read"
        worker.start()
        producer.join()
        worker.wait_caught_up(end_offsets(settings, SOURCES))
        time.sleep(1.5)  # the last flush reached the tables
        starts, requests, attempts = expected_counts(events)
        assert table_counts(worker, "quality", "cdn_edge", "starts") == starts
        assert table_counts(worker, "edges", "cdn_edge", "requests") == requests
        assert table_counts(worker, "logins", "source_ip", "attempts") == attempts
        assert sum(starts.values()) == simulator.truth.counts["playback_start"]
    finally:
        worker.stop()
        if producer.is_alive():
            producer.join()

    alerts = [record for _, record in read_since(settings, contract, alerts_since)]
    keys = Counter((a["alert_id"], a["status"]) for a in alerts)
    assert [k for k, n in keys.items() if n > 1] == [], "no alert notified twice"
    outage = simulator.truth.incidents[0]
    fired = {a["alert_id"] for a in alerts if a["entity"] == outage["target"] and a["status"] == "FIRING"}
    assert fired, "the outage raised its alerts across the restart"
