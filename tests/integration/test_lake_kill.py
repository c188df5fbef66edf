"""``reelpulse lake build`` killed with SIGKILL mid-bronze and again mid-silver, then run
to the end: every Kafka record of every event topic is in bronze (or its quarantine)
exactly once, and every bronze event is in silver (or ``_late``) exactly once.

The build runs as the command a person would run, in a process group of its own (the
Spark JVM included), against the session's broker and registry and a lake of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from batch import bronze, silver
from batch.lake import Lake
from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import SimulationConfig, Simulator
from reelpulse.testing import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

KEY = "kill-test-pseudonymization-key-0123456789"
BUILD_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def lake_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return settings.model_copy(
        update={
            "lake_dir": str(tmp_path_factory.mktemp("kill-lake")),
            "spark_master": "local[2]",
            "bronze_max_offsets_per_batch": 2_000,  # many micro-batches: room to die in between
            "silver_pseudonymization_key": SecretStr(KEY),
        }
    )


@pytest.fixture(scope="module")
def produced(lake_settings: Settings, contract: Contract, schema_ids: dict[str, int]) -> int:
    simulator = Simulator(SimulationConfig(seed=21, users=500, titles=60, rate=600.0, duration_s=20.0))
    with EventProducer(lake_settings, contract, schema_ids=schema_ids) as producer:
        count = producer.produce_all(("title", t) for t in simulator.catalog())
        return count + producer.produce_all(simulator.events())


@dataclass
class Build:
    """A ``reelpulse lake build`` process in a group of its own, printing to a file (not a
    pipe, which a chatty build could fill and block on)."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def kill_when(self, ready: Callable[[], bool]) -> None:
        """SIGKILL the whole group (the Spark JVM too) as soon as ``ready()`` holds."""
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while not ready():
            assert self.process.poll() is None, f"the build ended before it was killed:\n{self.output()}"
            assert time.monotonic() < deadline, "the build never reached the point to kill it"
            time.sleep(0.2)
        self.kill()


@pytest.fixture
def builds(lake_settings: Settings) -> Iterator[Callable[[], Build]]:
    """Starts builds over the test's lake; none outlives the test."""
    started: list[Build] = []
    command = [sys.executable, "-m", "reelpulse", "lake", "build", "--layer", "silver"]
    env = {**os.environ, **settings_env(lake_settings)}

    def start() -> Build:
        log = Path(lake_settings.lake_dir).with_name(f"build-{len(started)}.log")
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(Build(process, log))
        return started[-1]

    yield start
    for build in started:
        if build.process.poll() is None:
            build.kill()


def commits(root: Path) -> int:
    return len(list(root.glob("*/_delta_log/*.json")))


def kafka_coordinates(settings: Settings, topics: list[str]) -> Counter[tuple[str, int, int]]:
    """Every (topic, partition, offset) in the topics now (idempotent producers, no
    transactions, no compaction: the offsets from low to high are all records)."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "reelpulse-tests-kill"})
    try:
        found: Counter[tuple[str, int, int]] = Counter()
        for topic in topics:
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                found.update((topic, partition, offset) for offset in range(low, high))
        return found
    finally:
        consumer.close()


def lake_coordinates(spark: Any, root: Path) -> Counter[tuple[str, int, int]]:
    found: Counter[tuple[str, int, int]] = Counter()
    for log in sorted(root.glob("*/_delta_log")):
        if not any(log.glob("*.json")):  # killed before the table's first commit: no table yet
            continue
        table = spark.read.format("delta").load(str(log.parent))
        rows = table.select("_kafka_topic", "_kafka_partition", "_kafka_offset").collect()
        found.update((r[0], r[1], r[2]) for r in rows)
    return found


def test_killed_builds_then_a_full_run_land_every_event_exactly_once(
    spark: Any, lake_settings: Settings, contract: Contract, produced: int, builds: Callable[[], Build]
) -> None:
    lake = Lake(lake_settings.lake_dir)
    bronze_root, silver_root = Path(lake.bronze("")), Path(lake.silver(""))
    topics = sorted({e.topic for e in contract if e.topic not in bronze.NOT_INGESTED})
    expected = kafka_coordinates(lake_settings, topics)
    assert sum(expected.values()) >= produced

    builds().kill_when(lambda: commits(bronze_root) >= 2)
    assert sum(lake_coordinates(spark, bronze_root).values()) < sum(expected.values()), "killed too late"

    builds().kill_when(lambda: commits(silver_root) >= 1)
    assert not Path(lake.offsets).exists(), "killed too late: silver had finished"

    last = builds()
    assert last.process.wait(timeout=BUILD_TIMEOUT_S) == 0, last.output()

    landed = lake_coordinates(spark, bronze_root)
    assert {c: n for c, n in landed.items() if n != 1} == {}
    assert landed == expected

    for event in contract:
        if event.topic in bronze.NOT_INGESTED or event.name == "title":
            continue
        path = lake.bronze(event.name)
        if not Path(path).exists():
            continue
        table = spark.read.format("delta").load(path)
        column = "envelope.event_id" if "envelope" in table.columns else "event_id"
        in_bronze = {r[0] for r in table.select(column).collect()}
        silver_ids = spark.read.format("delta").load(lake.silver(event.name)).select("event_id")
        in_silver = Counter(r[0] for r in silver_ids.collect())
        assert {i: n for i, n in in_silver.items() if n != 1} == {}, event.name
        late = set()
        if Path(lake.silver(silver.LATE)).exists():
            rows = (
                spark.read.format("delta")
                .load(lake.silver(silver.LATE))
                .where(f"event_type = '{event.name}'")
            )
            late = {r.event_key for r in rows.collect()}
        assert set(in_silver) | late == in_bronze, event.name
        assert not set(in_silver) & late, event.name
