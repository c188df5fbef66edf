"""DuckDB over the lake: a view per Delta table, time travel, and no writes."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from batch import sql


@pytest.fixture
def lake(tmp_path: Path) -> str:
    sessions = tmp_path / "silver" / "playback_sessions"
    write_deltalake(str(sessions), pa.table({"title_id": ["t1", "t2"], "watch_ms": [1000, 2000]}))
    time.sleep(0.05)
    write_deltalake(str(sessions), pa.table({"title_id": ["t1"], "watch_ms": [500]}), mode="append")
    write_deltalake(
        str(tmp_path / "gold" / "title_engagement"), pa.table({"title_id": ["t1"], "starts": [3]})
    )
    (tmp_path / "gold" / "not_a_table").mkdir()
    return str(tmp_path)


def test_every_delta_table_is_a_view_named_by_layer(lake: str) -> None:
    assert set(sql.lake_tables(lake)) == {"silver.playback_sessions", "gold.title_engagement"}
    columns, rows = sql.query(
        lake, "SELECT title_id, sum(watch_ms) FROM silver.playback_sessions GROUP BY 1 ORDER BY 1"
    )
    assert columns[0] == "title_id"
    assert rows == [("t1", 1500), ("t2", 2000)]


def test_time_travel_by_version_and_by_timestamp(lake: str) -> None:
    table = "silver.playback_sessions"
    count = "SELECT count(*) FROM silver.playback_sessions"
    assert sql.query(lake, count)[1] == [(3,)]
    assert sql.query(lake, count, sql.TimeTravel(versions={table: 0}))[1] == [(2,)]
    history = DeltaTable(sql.lake_tables(lake)[table]).history()
    first_commit = min(entry["timestamp"] for entry in history)
    as_of = dt.datetime.fromtimestamp(first_commit / 1000, dt.UTC)
    assert sql.query(lake, count, sql.TimeTravel(as_of=as_of))[1] == [(2,)]


def test_describe_lists_columns_and_types(lake: str) -> None:
    described = sql.describe(lake)
    assert described["gold.title_engagement"] == [("title_id", "VARCHAR"), ("starts", "BIGINT")]


def test_the_lake_cannot_be_written_through_sql(lake: str) -> None:
    with pytest.raises(duckdb.Error):
        sql.query(lake, "DELETE FROM silver.playback_sessions")
    assert sql.query(lake, "SELECT count(*) FROM silver.playback_sessions")[1] == [(3,)]
