"""Schema evolution end to end: a new optional field added to an event's ``.avsc`` shows
up as a new column in bronze and silver on the next runs, with no manual step; rows
written before the change read it as null.

The evolving event (``search``) is produced to a topic of its own, so the shared topics
and their registry subjects stay as the other tests expect.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from batch import bronze, silver, sql
from batch.lake import Lake
from reelpulse import registry, topics
from reelpulse.contract import Contract, TopicSpec
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import SimulationConfig, Simulator

pytestmark = pytest.mark.integration

TOPIC = "test.evolution.searches"
KEY = b"evolution-test-pseudonymization-key"
NEW_FIELD = {
    "name": "voice",
    "type": ["null", "boolean"],
    "default": None,
    "doc": "Whether the query was spoken rather than typed.",
}


def contract_copy(source: Path, target: Path, evolved: bool) -> Path:
    """The project's schemas with ``search`` on its own topic, optionally with the new field."""
    shutil.copytree(source, target)
    path = target / "search.avsc"
    schema = json.loads(path.read_text())
    schema["reelpulse.topic"] = TOPIC
    if evolved:
        schema["fields"].append(NEW_FIELD)
    path.write_text(json.dumps(schema, indent=2))
    return target


@pytest.fixture(scope="module")
def versions(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Settings]:
    root, lake = tmp_path_factory.mktemp("evolution"), tmp_path_factory.mktemp("evolution-lake")
    common = {"lake_dir": str(lake), "spark_master": "local[2]"}
    topics.ensure_topics(settings, [TopicSpec(TOPIC, 3_600_000)])
    return {
        name: settings.model_copy(
            update={
                **common,
                "schemas_dir": contract_copy(settings.schemas_dir, root / name, evolved=evolved),
            }
        )
        for name, evolved in (("v1", False), ("v2", True))
    }


def searches(seed: int, count: int) -> list[dict[str, Any]]:
    simulator = Simulator(SimulationConfig(seed=seed, users=200, titles=30, rate=300.0, duration_s=30.0))
    found = [dict(record) for name, record in simulator.events() if name == "search"]
    assert len(found) >= count, "the simulator made too few searches for this test"
    return found[:count]


def produce(settings: Settings, records: list[dict[str, Any]]) -> None:
    contract = Contract(settings.schemas_dir)
    ids = registry.register_all(settings, contract)
    with EventProducer(settings, contract, schema_ids=ids) as producer:
        producer.produce_all(("search", record) for record in records)


def build(settings: Settings, spark: Any) -> None:
    bronze.run(settings, spark, [TOPIC])
    silver.run(settings, spark, pseudonymization_key=KEY, tables=["search"])


def voice_by_event(spark: Any, path: str, event_id: str) -> dict[str, Any]:
    rows = spark.read.format("delta").load(path).select(event_id, "voice").collect()
    return {row[0]: row[1] for row in rows}


def test_a_new_optional_field_becomes_a_column_in_bronze_and_silver(
    versions: dict[str, Settings], spark: Any
) -> None:
    before, after = searches(seed=11, count=40), searches(seed=12, count=25)
    produce(versions["v1"], before)
    build(versions["v1"], spark)
    lake = Lake(versions["v1"].lake_dir)
    assert "voice" not in spark.read.format("delta").load(lake.silver("search")).columns

    for record in after:
        record["voice"] = True
    produce(versions["v2"], after)
    build(versions["v2"], spark)

    old = {r["envelope"]["event_id"] for r in before}
    new = {r["envelope"]["event_id"] for r in after}
    expected = {**dict.fromkeys(old), **dict.fromkeys(new, True)}
    assert voice_by_event(spark, lake.bronze("search"), "envelope.event_id") == expected
    assert voice_by_event(spark, lake.silver("search"), "event_id") == expected
    _columns, rows = sql.query(
        versions["v2"].lake_dir, "SELECT voice, count(*) FROM silver.search GROUP BY voice ORDER BY voice"
    )
    assert rows == [(True, len(new)), (None, len(old))]
