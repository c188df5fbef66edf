"""Quality gates on hand-built batches: a good batch is published, a bad one is held at its
audit path with every failed expectation named and the published table unchanged; the
volume, freshness and referential-integrity checks; Data Docs and the runs table.

One local Spark session (local[2], 2 shuffle partitions, UI off), one temp lake and one
gate per module.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from batch import quality, silver
from batch.lake import Lake
from batch.quality import Gate, QualityGateFailed
from reelpulse.settings import Settings

T0 = dt.datetime(2025, 1, 10, 12, 0, tzinfo=dt.UTC)
SESSIONS = "session_id string, started_at timestamp, rebuffer_ratio double, state string, watch_time_ms long"
EXPECTATIONS: list[dict[str, Any]] = [
    {"expect_column_values_to_not_be_null": {"column": "session_id"}},
    {"expect_column_values_to_be_unique": {"column": "session_id"}},
    {"expect_column_values_to_not_be_null": {"column": "started_at"}},
    {"expect_column_values_to_be_between": {"column": "rebuffer_ratio", "min_value": 0, "max_value": 1}},
    {"expect_column_values_to_be_in_set": {"column": "state", "value_set": ["OPEN", "CLOSED"]}},
    {"expect_column_values_to_be_between": {"column": "watch_time_ms", "min_value": 0}},
    {"expect_column_values_to_be_in_set": {"column": "device_type", "value_set": ["TV"], "optional": True}},
]


@pytest.fixture(scope="module")
def gate(lake_settings: Settings, spark: Any) -> Gate:
    return Gate(lake_settings, spark, run_id="unit-run")


def sessions(spark: Any, rows: list[tuple[Any, ...]], schema: str = SESSIONS) -> Any:
    return spark.createDataFrame(rows, schema)


GOOD = [("s1", T0, 0.0, "CLOSED", 1000), ("s2", T0, 0.25, "OPEN", 0), ("s3", T0, None, "CLOSED", 5)]


@pytest.fixture(scope="module")
def published(spark: Any, gate: Gate) -> list[tuple[Any, ...]]:
    """A good version of ``silver/q_sessions``, published through the gate."""
    gate.publish_overwrite("silver", "q_sessions", sessions(spark, GOOD), expectations=EXPECTATIONS)
    return GOOD


def rows(spark: Any, path: str) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in spark.read.format("delta").load(path).collect()), key=repr)


def collected(batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows as Spark returns them: timestamps as naive local times, sorted like ``rows``."""

    def value(v: Any) -> Any:
        return v.astimezone().replace(tzinfo=None) if isinstance(v, dt.datetime) else v

    return sorted((tuple(value(v) for v in row) for row in batch), key=repr)


def version(spark: Any, path: str) -> int:
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).collect()[0].version)


def test_contract_items_become_gx_expectations() -> None:
    contract = silver.load_contract()
    assert quality.contract_expectations(contract, "dim_titles")[0] == {
        "expect_column_values_to_be_unique": {"column": "title_id"}
    }
    assert (
        quality.contract_expectations(contract, "playback_heartbeat")
        == contract["event_tables"]["expectations"]
    )
    built = quality.build_expectations(
        [
            *EXPECTATIONS,
            {"expect_column_values_to_not_be_null": {"column": "absent", "optional": True}},
            {"expect_table_columns_to_match_set": {"column_set": ["session_id", "watch_time_ms"]}},
        ],
        {"session_id": "string", "started_at": "timestamp", "rebuffer_ratio": "double", "state": "string"},
        history=lambda runs: [],
        lake=Lake("/lake"),
    )
    assert [type(e).__name__ for e in built] == [
        "ExpectColumnToExist",  # watch_time_ms is missing: a schema check, first
        "ExpectColumnValuesToNotBeNull",
        "ExpectColumnValuesToBeUnique",
        "ExpectColumnValuesToNotBeNull",
        "ExpectColumnValuesToBeBetween",
        "ExpectColumnValuesToBeInSet",
        "ExpectTableColumnsToMatchSet",  # compares the columns itself
    ]  # the optional expectations on absent columns are left out
    with pytest.raises(ValueError, match="unknown expectation type 'expect_magic'"):
        quality.build_expectations([{"expect_magic": {}}], {}, history=lambda runs: [], lake=Lake("/lake"))


def test_good_batch_is_published_and_its_audit_copy_dropped(
    spark: Any, lake_settings: Settings, published: list[tuple[Any, ...]]
) -> None:
    lake = Lake(lake_settings.lake_dir)
    assert rows(spark, lake.silver("q_sessions")) == collected(published)
    assert not Path(lake.audit("silver", "q_sessions")).exists()


def test_audit_returns_the_written_rows_until_released(
    spark: Any, gate: Gate, lake_settings: Settings
) -> None:
    audited = gate.audit("silver", "q_audited", sessions(spark, GOOD), EXPECTATIONS)
    assert sorted((tuple(r) for r in audited.collect()), key=repr) == collected(GOOD)
    held = Lake(lake_settings.lake_dir).audit("silver", "q_audited")
    assert rows(spark, held) == collected(GOOD)
    gate.release("silver")  # the caller has published the rows
    assert not Path(held).exists()


BAD = [(None, T0, 0.1, "OPEN"), ("s1", T0, 0.2, "CLOSED"), ("s1", T0, 1.5, "CLOSED")]
NO_WATCH_TIME = "session_id string, started_at timestamp, rebuffer_ratio double, state string"


@pytest.fixture(scope="module")
def rejected(
    spark: Any, gate: Gate, lake_settings: Settings, published: Any
) -> tuple[int, QualityGateFailed]:
    """A bad batch offered for ``silver/q_sessions``: a null and a duplicate key, a ratio out of
    range, a missing column. Returns the table's version before, and the gate's error."""
    before = version(spark, Lake(lake_settings.lake_dir).silver("q_sessions"))
    bad = sessions(spark, BAD, NO_WATCH_TIME)
    with pytest.raises(QualityGateFailed) as caught:
        gate.publish_overwrite("silver", "q_sessions", bad, expectations=EXPECTATIONS)
    return before, caught.value


def test_bad_batch_is_held_and_the_published_table_unchanged(
    spark: Any, gate: Gate, lake_settings: Settings, published: list[tuple[Any, ...]], rejected: Any
) -> None:
    lake = Lake(lake_settings.lake_dir)
    before, error = rejected
    failed = error.failed
    assert len(failed) == 4, failed
    schema_check = (
        "expect_column_to_exist(column='watch_time_ms') [needed by expect_column_values_to_be_between]"
    )
    assert f"{schema_check}: column missing" in failed
    assert any(f.startswith("expect_column_values_to_not_be_null(column='session_id')") for f in failed)
    assert any(f.startswith("expect_column_values_to_be_unique(column='session_id')") for f in failed)
    assert any("column='rebuffer_ratio'" in f and "1.5" in f for f in failed)
    message = str(error)
    assert all(f in message for f in failed)
    assert lake.audit("silver", "q_sessions") in message
    assert "index.html" in message
    assert (error.layer, error.table) == ("silver", "q_sessions")
    assert version(spark, lake.silver("q_sessions")) == before
    assert rows(spark, lake.silver("q_sessions")) == collected(published)
    assert error.audit_path == lake.audit("silver", "q_sessions")
    gate.release("silver")  # drops passed batches only
    assert rows(spark, error.audit_path) == collected(BAD)
    assert Path(error.docs_path).is_file()


def test_volume_against_recent_runs(spark: Any, gate: Gate) -> None:
    volume = [{quality.VOLUME: {"min_ratio": 0.5, "max_ratio": 3.0, "runs": 5}}]
    batch = [(f"s{i}", T0, 0.0, "CLOSED", 1) for i in range(10)]
    gate.audit("silver", "q_volume", sessions(spark, batch[:4]), volume)  # first run: nothing to compare
    gate.audit("silver", "q_volume", sessions(spark, batch), volume)
    gate.audit("silver", "q_volume", sessions(spark, batch), volume)  # median of 4, 10: 7
    assert gate.history("silver", "q_volume", 5) == [10, 10, 4]
    with pytest.raises(QualityGateFailed) as caught:
        gate.audit("silver", "q_volume", sessions(spark, batch[:3]), volume)  # median 10, 3 < 5
    (failure,) = caught.value.failed
    assert failure.startswith("expect_table_row_count_to_be_between(min_value=5, max_value=30)")
    assert "median 10 of the last 3 successful runs" in failure
    assert failure.endswith("observed 3")


def test_freshness_against_the_callers_instant(spark: Any, gate: Gate) -> None:
    batch = sessions(spark, [("s1", T0 - dt.timedelta(hours=2), 0.0, "OPEN", 1), ("s2", T0, 0.0, "OPEN", 1)])
    fresh = {quality.FRESHNESS: {"column": "started_at", "not_older_than": T0.isoformat()}}
    gate.audit("silver", "q_fresh", batch, [fresh])
    stale = {quality.FRESHNESS: {"column": "started_at", "not_older_than": T0 + dt.timedelta(minutes=1)}}
    with pytest.raises(QualityGateFailed) as caught:
        gate.audit("silver", "q_fresh", batch, [stale])
    (failure,) = caught.value.failed
    assert failure.startswith("expect_column_max_to_be_between(column='started_at'")
    assert "2025-01-10T12:01:00+00:00" in failure
    assert "observed" in failure


def test_references_to_another_lake_table(spark: Any, gate: Gate, lake_settings: Settings) -> None:
    titles = spark.createDataFrame([("t1",), ("t2",)], "title_id string")
    titles.write.format("delta").mode("overwrite").save(Lake(lake_settings.lake_dir).silver("q_titles"))
    schema = "session_id string, title_id string"
    check = {"column": "title_id", "table": "silver/q_titles", "key": "title_id"}
    good = spark.createDataFrame([("s1", "t1"), ("s2", "t2"), ("s3", None)], schema)
    gate.audit("silver", "q_plays", good, [{quality.REFERENCES: check}])
    orphan = spark.createDataFrame([("s1", "t1"), ("s2", "t9")], schema)
    with pytest.raises(QualityGateFailed) as caught:
        gate.audit("silver", "q_plays", orphan, [{quality.REFERENCES: check}])
    (failure,) = caught.value.failed
    assert failure.startswith("unexpected_rows_expectation(")
    assert "title_id in silver/q_titles.title_id" in failure
    assert failure.endswith("1 unexpected rows")
    half = {quality.REFERENCES: {**check, "mostly": 0.5}}  # one of two values may be missing
    gate.audit("silver", "q_plays", orphan, [half])


def test_data_docs_show_the_suites_and_each_validation_once(
    gate: Gate, lake_settings: Settings, rejected: Any
) -> None:
    index = Path(gate.build_docs())
    assert index.name == "index.html"
    assert index.is_file()
    assert "silver.q_sessions" in index.read_text()
    stored = gate.context.validation_results_store.list_keys()
    suites = [key.expectation_suite_identifier.name for key in stored]
    assert suites.count("silver.q_sessions") == 2  # the good batch, the bad one (detailed once)
    pages = Path(Lake(lake_settings.lake_dir).quality, "docs", "validations", "silver", "q_sessions")
    assert len(list(pages.rglob("*.html"))) == 2


def test_a_passing_schema_check_gets_its_validation_page(
    spark: Any, gate: Gate, lake_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # GX lays a validation page out by the columns the schema check observed, which a
    # passing run's BOOLEAN_ONLY result does not keep: the page failed to render.
    ordered = {"expect_table_columns_to_match_ordered_list": {"column_list": ["session_id", "state"]}}
    frame = spark.createDataFrame([("s1", "OPEN")], "session_id string, state string")
    gate.audit("silver", "q_columns", frame, [ordered])
    with caplog.at_level("ERROR", logger="great_expectations"):
        gate.build_docs()
    assert not [r for r in caplog.records if r.name.startswith("great_expectations")]
    pages = Path(Lake(lake_settings.lake_dir).quality, "docs", "validations", "silver", "q_columns")
    (page,) = pages.rglob("*.html")
    assert "session_id" in page.read_text()


def test_runs_table_records_successes_and_failures(spark: Any, gate: Gate, rejected: Any) -> None:
    recorded = spark.read.format("delta").load(gate.runs_path).where("table = 'q_sessions'").collect()
    assert {r.run_id for r in recorded} == {"unit-run"}
    assert {(r.layer, r.success, r.row_count) for r in recorded} == {
        ("silver", True, 3),
        ("silver", False, 3),
    }
    failed = next(json.loads(r.failed) for r in recorded if not r.success)
    assert len(failed) == 4
    assert all(isinstance(f, str) for f in failed)
    assert all(r.validated_at is not None for r in recorded)
