"""DuckDB over the lake, read-only.

Every Delta table under ``<lake>/{bronze,silver,gold}/<name>`` becomes a view
``<layer>.<name>`` (``SELECT * FROM silver.playback_sessions``). The delta extension is
loaded from the pinned ``duckdb-extension-delta`` package, offline. Time travel reads a
table as of a version or a timestamp through delta-rs, which DuckDB then scans as Arrow.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batch import lake

if TYPE_CHECKING:
    import duckdb


# Questions people ask of gold, by name (``reelpulse sql --question NAME``). "Yesterday" is
# the day before the newest day in the lake, so a backfill of any period has one.
QUESTIONS = {
    "top-titles-yesterday": """
        SELECT title_id, title_name, round(sum(watch_hours), 3) AS watch_hours,
               sum(unique_viewers) AS viewers, round(avg(completion_rate), 3) AS completion_rate
        FROM gold.title_engagement_daily
        WHERE event_date = (SELECT max(event_date) FROM gold.title_engagement_daily) - INTERVAL 1 DAY
        GROUP BY ALL ORDER BY watch_hours DESC, title_id LIMIT 10""",
    "edges-by-rebuffer-ratio": """
        SELECT cdn_edge,
               round(sum(rebuffer_hours) / nullif(sum(watch_hours) + sum(rebuffer_hours), 0), 4)
                   AS rebuffer_ratio,
               sum(sessions) AS sessions, round(sum(watch_hours), 1) AS watch_hours
        FROM gold.playback_quality_daily
        GROUP BY cdn_edge ORDER BY rebuffer_ratio DESC NULLS LAST, cdn_edge""",
}


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that can read Delta tables (``delta_scan``)."""
    import duckdb
    import duckdb_extensions

    connection = duckdb.connect()
    duckdb_extensions.import_extension("delta", con=connection)
    connection.execute("LOAD delta")
    return connection


@dataclass(frozen=True)
class TimeTravel:
    """Read tables as they were: ``versions`` per qualified table name, or all as of a time."""

    versions: dict[str, int] | None = None
    as_of: dt.datetime | None = None


def lake_tables(lake_dir: str) -> dict[str, str]:
    """Qualified view name -> table path for every Delta table directly under a layer
    (nested tables such as ``silver/_state/bronze_offsets`` have no view)."""
    return {t.qualified: t.path for t in lake.tables(lake_dir) if "/" not in t.name}


def lake_connection(lake_dir: str, travel: TimeTravel | None = None) -> duckdb.DuckDBPyConnection:
    """A connection with a view per lake table."""
    connection = connect()
    tables = lake_tables(lake_dir)
    for layer in sorted({name.split(".")[0] for name in tables}):
        connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{layer}"')
    for name, path in tables.items():
        _create_view(connection, name, path, travel or TimeTravel())
    return connection


def _create_view(connection: duckdb.DuckDBPyConnection, name: str, path: str, travel: TimeTravel) -> None:
    layer, table = name.split(".")
    version = (travel.versions or {}).get(name)
    if version is None and travel.as_of is None:
        source = f"delta_scan('{_quote(path)}')"
    else:
        source = _register_snapshot(connection, name, path, version, travel.as_of)
    connection.execute(f'CREATE VIEW "{layer}"."{table}" AS SELECT * FROM {source}')


def _register_snapshot(
    connection: Any, name: str, path: str, version: int | None, as_of: dt.datetime | None
) -> str:
    from deltalake import DeltaTable

    table = DeltaTable(path)
    table.load_as_version(version if version is not None else as_of)  # type: ignore[arg-type]
    relation = f"snapshot_{name.replace('.', '_')}"
    connection.register(relation, table.to_pyarrow_dataset())
    return relation


def _quote(text: str) -> str:
    return text.replace("'", "''")


def query(
    lake_dir: str, sql: str, travel: TimeTravel | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of ``sql`` run over the lake's views."""
    connection = lake_connection(lake_dir, travel)
    try:
        result = connection.execute(sql)
        return [column[0] for column in result.description], result.fetchall()
    finally:
        connection.close()


def describe(lake_dir: str) -> dict[str, list[tuple[str, str]]]:
    """Columns and types of every lake table, by qualified view name."""
    connection = lake_connection(lake_dir)
    try:
        return {
            name: [(row[0], row[1]) for row in connection.execute(f"DESCRIBE {name}").fetchall()]
            for name in lake_tables(lake_dir)
        }
    finally:
        connection.close()
