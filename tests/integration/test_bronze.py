"""Bronze from a data engineer's side: after the simulator ran, one bronze run holds
exactly the produced events per event type, bad bytes sit in quarantine with their
reason, a second run adds nothing, and DuckDB and delta-rs see what Spark sees."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from batch import bronze, maintenance, sql
from batch.lake import Lake
from reelpulse import topics
from reelpulse.contract import Contract, TopicSpec, encode
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import SimulationConfig, Simulator

GARBAGE_TOPIC = "test.bronze.garbage"
GARBAGE = {
    "not_wire_format": b"hello, not avro",
    "unknown_schema_id": b"\x00\x00\x0f\x42\x40" + b"\x02\x04ab",
}


@pytest.fixture(scope="module")
def lake_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    lake = tmp_path_factory.mktemp("lake")
    return settings.model_copy(update={"lake_dir": str(lake), "spark_master": "local[2]"})


@pytest.fixture(scope="module")
def produced(lake_settings: Settings, contract: Contract, schema_ids: dict[str, int]) -> dict:
    simulator = Simulator(SimulationConfig(seed=5, users=400, titles=50, rate=400.0, duration_s=15.0))
    titles = simulator.catalog()
    events = list(simulator.events())
    with EventProducer(lake_settings, contract, schema_ids=schema_ids) as producer:
        producer.produce_all(("title", t) for t in titles)
        producer.produce_all(events)
    heartbeat = contract["playback_heartbeat"]
    record = next(r for n, r in events if n == heartbeat.name)
    truncated = encode(schema_ids[heartbeat.name], heartbeat.parsed, record)[:12]
    # Bad bytes go to a topic of their own: the event topics are shared with other tests.
    topics.ensure_topics(lake_settings, [TopicSpec(GARBAGE_TOPIC, 3_600_000)])
    raw = Producer(lake_settings.kafka_client_config())
    for value in [*GARBAGE.values(), truncated]:
        raw.produce(GARBAGE_TOPIC, value, b"garbage")
    raw.flush(30)
    ids: dict[str, set[str]] = {}
    for name, record in events:
        ids.setdefault(name, set()).add(record.get("envelope", record)["event_id"])
    return {"ids": ids, "titles": {t["title_id"] for t in titles}, "truncated": truncated}


@pytest.fixture(scope="module")
def ingested(spark, lake_settings: Settings, produced: dict) -> dict:
    """One bronze run over every topic, after the simulator's traffic and the bad bytes."""
    runs = {
        "events": bronze.run(lake_settings, spark),
        "garbage": bronze.run(lake_settings, spark, [GARBAGE_TOPIC]),
    }
    return {**produced, "runs": runs}


def bronze_ids(spark, settings: Settings, name: str, contract: Contract) -> Counter[str]:
    table = spark.read.format("delta").load(Lake(settings.lake_dir).bronze(name))
    column = "envelope.event_id" if "envelope" in table.columns else "event_id"
    return Counter(row[0] for row in table.select(column).collect())


def test_bronze_holds_exactly_the_produced_events_once(
    spark, lake_settings: Settings, contract: Contract, ingested: dict
) -> None:
    produced = ingested
    for name, ids in sorted(produced["ids"].items()):
        landed = bronze_ids(spark, lake_settings, name, contract)
        assert ids <= set(landed), name
        assert {i: n for i, n in landed.items() if i in ids and n != 1} == {}, name
    titles = spark.read.format("delta").load(Lake(lake_settings.lake_dir).bronze("title"))
    assert produced["titles"] <= {row.title_id for row in titles.select("title_id").collect()}


def test_a_run_reports_the_rows_it_appended_to_each_table(
    spark, lake_settings: Settings, ingested: dict
) -> None:
    lake, runs = Lake(lake_settings.lake_dir), ingested["runs"]
    events = runs["events"]["rows"]
    assert set(ingested["ids"]) <= set(events)
    garbage = len(GARBAGE) + 1
    assert runs["garbage"] == {"topics": [GARBAGE_TOPIC], "rows": {bronze.QUARANTINE: garbage}}
    on_disk = {name: spark.read.format("delta").load(lake.bronze(name)).count() for name in events}
    if bronze.QUARANTINE in on_disk:  # bad records other tests left in the shared event topics
        on_disk[bronze.QUARANTINE] -= garbage
    assert events == on_disk  # the lake was empty before these runs


def test_bad_bytes_are_quarantined_with_reason_and_original_bytes(
    spark, lake_settings: Settings, ingested: dict
) -> None:
    produced = ingested
    quarantine = spark.read.format("delta").load(Lake(lake_settings.lake_dir).bronze(bronze.QUARANTINE))
    rows = {
        bytes(r.original_value): r for r in quarantine.where(f"_kafka_topic = '{GARBAGE_TOPIC}'").collect()
    }
    for error_type, value in GARBAGE.items():
        assert rows[value].error_type == error_type
        assert rows[value].reason
        assert rows[value]._kafka_offset is not None
    assert rows[produced["truncated"]].error_type == "undecodable"
    assert "schema id" in rows[produced["truncated"]].reason


def test_a_second_run_adds_nothing(spark, lake_settings: Settings, ingested: dict) -> None:
    produced = ingested
    lake = Lake(lake_settings.lake_dir)
    before = {name: spark.read.format("delta").load(lake.bronze(name)).count() for name in produced["ids"]}
    assert bronze.run(lake_settings, spark)["rows"] == {}
    after = {name: spark.read.format("delta").load(lake.bronze(name)).count() for name in produced["ids"]}
    assert after == before


def test_duckdb_and_delta_rs_read_what_spark_reads(spark, lake_settings: Settings, ingested: dict) -> None:
    from deltalake import DeltaTable

    path = Lake(lake_settings.lake_dir).bronze("playback_heartbeat")
    spark_count = spark.read.format("delta").load(path).count()
    assert DeltaTable(path).to_pyarrow_table().num_rows == spark_count
    connection = sql.connect()
    assert connection.execute(f"SELECT count(*) FROM delta_scan('{path}')").fetchone()[0] == spark_count
    assert Path(path).exists()


def test_a_topic_that_fails_fails_the_run_and_stops_every_query(
    spark, lake_settings: Settings, ingested: dict, tmp_path: Path
) -> None:
    settings = lake_settings.model_copy(update={"lake_dir": str(tmp_path / "lake")})
    blocked = Path(Lake(settings.lake_dir).checkpoint("reelpulse.ratings"))
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the checkpoint directory goes")
    with pytest.raises(Exception, match=r"Destination exists and is not a directory: .*reelpulse\.ratings"):
        bronze.run(settings, spark, ["reelpulse.catalog", "reelpulse.ratings", "reelpulse.searches"])
    assert spark.streams.active == []


def test_a_batch_has_one_ingest_time_and_bronze_parquet_settings_stay_in_bronze(
    spark, lake_settings: Settings, contract: Contract, ingested: dict
) -> None:
    assert all(spark.conf.get(key, None) != value for key, value in bronze.RUN_CONF.items())
    lake = Lake(lake_settings.lake_dir)
    playback = [e.name for e in contract if e.topic == "reelpulse.playback" and e.name in ingested["ids"]]
    times = set()
    for name in playback:
        table = spark.read.format("delta").load(lake.bronze(name))
        times |= {row[0] for row in table.select("_ingested_at").distinct().collect()}
    assert len(playback) > 1
    assert len(times) == 1  # the topic came in one micro-batch

    path = lake.bronze("playback_heartbeat")
    assert dictionary_encoded(path) == {False}
    [compacted] = maintenance.optimize(lake_settings, spark, ["bronze"], ["bronze.playback_heartbeat"])
    assert compacted.files_after < compacted.files_before
    assert True in dictionary_encoded(path)  # OPTIMIZE writes with the session's defaults


def dictionary_encoded(path: str) -> set[bool]:
    """Whether each column chunk of the table's current files is dictionary-encoded."""
    from deltalake import DeltaTable

    found = set()
    for uri in DeltaTable(path).file_uris():
        meta = pq.ParquetFile(uri.removeprefix("file://")).metadata
        for group in range(meta.num_row_groups):
            for column in range(meta.num_columns):
                found.add(any("DICTIONARY" in e for e in meta.row_group(group).column(column).encodings))
    return found
