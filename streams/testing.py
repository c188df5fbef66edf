"""Helpers for tests and benchmarks of streams/: a worker as a subprocess on a free port,
a rules file with short windows, and reading what landed on a topic since a point."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from reelpulse.contract import Contract
from reelpulse.settings import Settings
from reelpulse.testing import free_port
from streams.codec import WireDecoder, registry_fetcher
from streams.config import DEFAULT_RULES, render_rules

FAST_WINDOWS = {"quality_s": 10, "grace_s": 2, "retain": 30, "starts_retain_s": 120, "idle_partition_s": 3}


def fast_rules_file(path: Path, warmup_s: int = 30, **windows: Any) -> Path:
    """rules.toml with 10-second windows (and a shorter baseline warm-up), for tests."""
    data = tomllib.loads(DEFAULT_RULES.read_text())
    data["windows"].update({**FAST_WINDOWS, **windows})
    for rule in data["rules"]:
        if rule["monitor"] == "starts":
            rule["warmup_s"] = warmup_s
    path.write_text(render_rules(data))
    return path


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for a subprocess that uses the same stack as ``settings``."""
    return {
        **os.environ,
        "REELPULSE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REELPULSE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "REELPULSE_STATE_DIR": str(settings.state_dir),
        "REELPULSE_TOPIC_PARTITIONS": str(settings.topic_partitions),
    }


class WorkerProcess:
    """``python -m streams worker`` in a subprocess with its own web port and data dir."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        app_id: str,
        rules: Path | None = None,
        monitors: str = "playback,cdn,login",
        start_at: str = "latest",
    ) -> None:
        self.settings, self.app_id = settings, app_id
        self.port = free_port()
        self.data_dir = workdir / f"data-{app_id}"
        self.log_path = workdir / f"{app_id}.log"
        self.command = [
            sys.executable, "-m", "streams", "worker",
            "--app-id", app_id, "--monitors", monitors, "--web-port", str(self.port),
            "--data-dir", str(self.data_dir), "--start-at", start_at, "--log-level", "info",
        ]  # fmt: skip
        if rules is not None:
            self.command += ["--rules", str(rules)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=settings_env(self.settings),
                start_new_session=True,
            )
        self.wait(lambda s: s["ready"], timeout_s, "ready")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.load(response)

    def status(self) -> dict[str, Any]:
        return dict(self.get("/api/status"))

    def rows(self, table: str) -> list[dict[str, Any]]:
        return list(self.get(f"/api/tables/{table}")["rows"])

    def wait(self, condition: Any, timeout_s: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker {self.app_id} exited; log:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                last = self.status()
                if condition(last):
                    return last
            time.sleep(0.25)
        raise TimeoutError(f"worker {self.app_id} not {what} after {timeout_s}s: {last}\n{self.log_tail()}")

    def wait_caught_up(self, ends: dict[str, int], timeout_s: float = 180.0) -> dict[str, Any]:
        """Until the worker has read every source partition up to ``ends`` (topic:partition ->
        end offset) and flushed (nothing waits for an acknowledgement)."""

        def done(status: dict[str, Any]) -> bool:
            positions = status["positions"]
            caught = all(
                positions.get(tp, status["started_positions"].get(tp, 0)) >= end for tp, end in ends.items()
            )
            return caught and status["pending_acks"] == 0

        return self.wait(done, timeout_s, "caught up")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no chance to flush, commit or close anything."""
        if self.alive() and self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if not self.alive() or self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


def end_offsets(settings: Settings, topics: list[str]) -> dict[str, int]:
    """``topic:partition`` -> end offset of every partition of ``topics``."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "streams-testing", "log_level": 3})
    try:
        ends = {}
        for topic in topics:
            for partition in consumer.list_topics(topic, timeout=15).topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
                ends[f"{topic}:{partition}"] = high
        return ends
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group: str, topics: list[str]) -> dict[str, int]:
    """``topic:partition`` -> offset committed by consumer group ``group`` (-1: none)."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "log_level": 3})
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.list_topics(topic, timeout=15).topics[topic].partitions
        ]
        return {f"{tp.topic}:{tp.partition}": tp.offset for tp in consumer.committed(partitions, timeout=15)}
    finally:
        consumer.close()


def read_since(
    settings: Settings, contract: Contract, since: dict[str, int]
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``(message, decoded record)`` of every record after ``since`` (as from end_offsets)."""
    from reelpulse import registry

    decoder = WireDecoder(contract, registry_fetcher(registry.client(settings)))
    now = end_offsets(settings, sorted({key.rsplit(":", 1)[0] for key in since}))
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "streams-testing", "log_level": 3})
    try:
        for key, start in sorted(since.items()):
            topic, partition = key.rsplit(":", 1)
            end = now[key]
            if end <= start:
                continue
            consumer.assign([TopicPartition(topic, int(partition), start)])
            position = start
            while position < end:
                for message in consumer.consume(500, timeout=2.0):
                    position = (message.offset() or 0) + 1
                    yield message, decoder.decode(message.value())[1]
    finally:
        consumer.close()
