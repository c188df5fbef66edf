"""Injected incidents raise alerts in real time and resolve after they end; the console
tail and the webhook sink each notify every alert once. Traffic is paced in real time by
``reelpulse simulate``; the worker runs with 10-second windows (``streams.testing``).

Precision and recall against the simulator's ground truth are printed and written to
``artifacts/streams/precision_recall.json``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reelpulse.contract import Contract
from reelpulse.settings import PROJECT_ROOT, Settings
from reelpulse.simulator.world import COUNTRY_POPS
from streams.testing import WorkerProcess, end_offsets, fast_rules_file, read_since, settings_env

WINDOW_MS = 10_000
SLACK_MS = 30_000
# The TV spike starts after the outage's alerts resolved: an outage on the busiest edge
# raises play failures on every device type too, and would claim the TV alert.
INCIDENTS = ("edge_outage:10:15", "login_attack:12:15", "play_failure_spike:40:15:device_type=TV")
TRAFFIC_S = 75


class Receiver(BaseHTTPRequestHandler):
    """Webhook receiver: records every POSTed notification."""

    received: list[dict[str, Any]] = []
    status_for: dict[str, list[int]] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        body["_idempotency_key"] = self.headers["idempotency-key"]
        statuses = self.status_for.get(body["alert_id"], [])
        status = statuses.pop(0) if statuses else 200
        if status == 200:
            self.received.append(body)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received, Receiver.status_for = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()


def sink(settings: Settings, *args: str, log: Path) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).parent / "reelpulse"), "alerts", *args]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=settings_env(settings))


def related(incident: dict[str, Any], alert: dict[str, Any], edges: dict[str, Any]) -> bool:
    """Whether the incident's traffic runs through the alert's entity (see README)."""
    kind, kind_target = incident["kind"], incident["target"]
    entity_type, entity = alert["entity_type"], alert["entity"]
    if kind == "login_attack":
        return entity_type == "source_ip" and entity in kind_target.split(",")
    if entity_type in ("title", "global"):
        return True
    if kind == "edge_outage":
        pop = edges[kind_target]["pop"]
        served = {c for c, pops in COUNTRY_POPS.items() if pop in pops}
        return (
            entity == kind_target
            or entity_type == "device_type"
            or (entity_type == "country" and entity in served)
        )
    target_type = incident["target_type"]
    return entity_type != target_type or entity == kind_target


def on_target(incident: dict[str, Any], alert: dict[str, Any]) -> bool:
    if incident["kind"] == "login_attack":
        return alert["entity"] in incident["target"].split(",")
    return alert["entity"] == incident["target"] and alert["entity_type"] == incident["target_type"]


def during(incident: dict[str, Any], alert: dict[str, Any]) -> bool:
    return incident["start_ms"] <= alert["first_seen"] <= incident["end_ms"] + WINDOW_MS + SLACK_MS


def test_incidents_raise_and_resolve_alerts_once_per_sink(
    settings: Settings, contract: Contract, schema_ids: dict[str, int], tmp_path: Path, receiver: str
) -> None:
    rules = fast_rules_file(tmp_path / "rules.toml")
    worker = WorkerProcess(settings, tmp_path, "alerts-test", rules)
    since = end_offsets(settings, ["reelpulse.alerts"])
    sinks: list[subprocess.Popen[bytes]] = []
    try:
        worker.start()
        duration = str(TRAFFIC_S + 120)  # a bound only: the test stops them
        sinks.append(
            sink(
                settings,
                "tail",
                "--plain",
                "--group",
                "t-tail",
                "--duration",
                duration,
                log=tmp_path / "tail.log",
            )
        )
        sinks.append(
            sink(
                settings,
                "webhook",
                receiver,
                "--group",
                "t-hook",
                "--duration",
                duration,
                log=tmp_path / "hook.log",
            )
        )
        time.sleep(5)  # both groups joined (they start at the latest offset)
        truth_path = tmp_path / "truth.json"
        command = [
            str(Path(sys.executable).parent / "reelpulse"), "simulate", "--duration", str(TRAFFIC_S),
            "--rate", "2000", "--users", "10000", "--seed", "31", "--truth", str(truth_path),
        ]  # fmt: skip
        for incident in INCIDENTS:
            command += ["--incident", incident]
        subprocess.run(
            command, env=settings_env(settings), check=True, capture_output=True, timeout=TRAFFIC_S + 90
        )
        time.sleep(6)
        assert worker.alive()
    finally:
        worker.stop()
        time.sleep(2)
        for process in sinks:
            process.send_signal(signal.SIGINT)  # both stop cleanly, committing what they handled
            process.wait(timeout=30)

    truth = json.loads(truth_path.read_text())
    alerts = [record for _, record in read_since(settings, contract, since)]
    keys = Counter((a["alert_id"], a["status"]) for a in alerts)
    assert [k for k, n in keys.items() if n > 1] == [], "no notification twice on the topic"
    firing = [a for a in alerts if a["status"] == "FIRING"]
    resolved = {a["alert_id"]: a for a in alerts if a["status"] == "RESOLVED"}

    report: dict[str, Any] = {"incidents": [], "alerts": len(firing)}
    for incident in truth["incidents"]:
        hits = [a for a in firing if on_target(incident, a) and during(incident, a)]
        assert hits, f"no alert on {incident['target']} for {incident['kind']}"
        first = min(hits, key=lambda a: a["event_time"])
        delay = first["event_time"] - incident["start_ms"]
        assert delay <= WINDOW_MS + SLACK_MS, f"{incident['kind']} alerted {delay} ms after it started"
        for alert in hits:
            assert alert["alert_id"] in resolved, f"{alert['rule']} on {alert['entity']} never resolved"
            assert resolved[alert["alert_id"]]["event_time"] >= incident["end_ms"]
        report["incidents"].append(
            {"kind": incident["kind"], "target": incident["target"], "detected_after_ms": delay,
             "alerts_on_target": sorted({a["rule"] for a in hits})}
        )  # fmt: skip

    strict = sum(any(on_target(i, a) and during(i, a) for i in truth["incidents"]) for a in firing)
    causal = sum(
        any(related(i, a, truth["edges"]) and during(i, a) for i in truth["incidents"]) for a in firing
    )
    report.update(
        recall=len(report["incidents"]) / len(truth["incidents"]),
        precision_target=strict / len(firing),
        precision_causal=causal / len(firing),
        false_positives=[f"{a['rule']} {a['entity']}" for a in firing if not any(
            related(i, a, truth["edges"]) and during(i, a) for i in truth["incidents"])],
    )  # fmt: skip
    out = PROJECT_ROOT / "artifacts" / "streams" / "precision_recall.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nprecision/recall: {json.dumps(report)}")
    assert report["recall"] == 1.0
    assert report["precision_causal"] >= 0.9

    tail_lines = [line for line in (tmp_path / "tail.log").read_text().splitlines() if " id=" in line]
    tail_keys = Counter((line.rsplit(" id=", 1)[1], line.split()[1]) for line in tail_lines)
    assert tail_keys == keys, "the tail shows each notification exactly once"
    hook_keys = Counter(body["_idempotency_key"] for body in Receiver.received)
    assert hook_keys == Counter(f"{a}:{s}" for a, s in keys), (
        "the webhook posts each notification exactly once"
    )
