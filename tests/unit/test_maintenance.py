"""Lake maintenance on a temp lake: every Delta table is listed (nested ones included),
OPTIMIZE compacts many small appends into few files with the same rows, and VACUUM refuses
a retention below the safety threshold unless forced.

One local Spark session (local[2], 2 shuffle partitions, UI off) and a temp lake per module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from batch import lake, maintenance, sql
from reelpulse.settings import Settings

APPENDS = 6
ROWS = "event_id string, user_id string, event_date string"


@pytest.fixture(scope="module")
def logins(spark: Any, lake_settings: Settings) -> str:
    """silver/login written in many small appends, two partitions: many small files."""
    path = lake.Lake(lake_settings.lake_dir).silver("login")
    for n in range(APPENDS):
        rows = [(f"e{n}-{i}", f"u{i}", f"2025-01-1{i % 2}") for i in range(3)]
        spark.createDataFrame(rows, ROWS).coalesce(1).write.format("delta").mode("append").partitionBy(
            "event_date"
        ).save(path)
    return path


def rows(spark: Any, path: str) -> list[tuple[Any, ...]]:
    return sorted(map(tuple, spark.read.format("delta").load(path).collect()))


def test_every_delta_table_is_listed_with_nested_ones(tmp_path: Path) -> None:
    for name in ("bronze/_quarantine", "silver/_late", "silver/_state/bronze_offsets", "gold/daily"):
        write_deltalake(str(tmp_path / name), pa.table({"x": [1]}))
    write_deltalake(str(tmp_path / "_audit/silver/dim_users"), pa.table({"x": [1]}))
    (tmp_path / "gold" / "not_a_table").mkdir()
    (tmp_path / "bronze" / "login" / "_delta_log").mkdir(parents=True)  # killed before its first commit
    found = [t.qualified for t in lake.tables(str(tmp_path))]
    assert found == ["bronze._quarantine", "silver._late", "silver._state/bronze_offsets", "gold.daily"]
    held = [t.qualified for t in lake.tables(str(tmp_path), audit=True) if t.audit]
    assert held == ["_audit.silver.dim_users"]
    assert set(sql.lake_tables(str(tmp_path))) == {"bronze._quarantine", "silver._late", "gold.daily"}


def test_a_lake_that_is_not_local_is_refused() -> None:
    with pytest.raises(lake.LakeLocationError, match="local"):
        lake.tables("s3a://bucket/lake")


def test_optimize_compacts_small_files_and_keeps_the_rows(
    spark: Any, lake_settings: Settings, logins: str
) -> None:
    before = rows(spark, logins)
    [result] = maintenance.optimize(lake_settings, spark, layers=("silver",), tables=["silver.login"])
    assert (result.table, result.files_before, result.files_after) == ("silver.login", 2 * APPENDS, 2)
    assert maintenance.detail(spark, logins)["numFiles"] == 2  # one file per partition
    assert rows(spark, logins) == before
    assert result.version == APPENDS  # versions 0..APPENDS-1 were the appends


def test_optimize_refuses_an_unknown_table(spark: Any, lake_settings: Settings, logins: str) -> None:
    with pytest.raises(maintenance.MaintenanceError, match=r"silver\.nope"):
        maintenance.optimize(lake_settings, spark, tables=["silver.nope"])


def test_vacuum_below_the_threshold_is_refused_without_force(
    spark: Any, lake_settings: Settings, logins: str
) -> None:
    version = maintenance.version(spark, logins)
    with pytest.raises(maintenance.MaintenanceError, match=r"below the safety threshold.*time travel"):
        maintenance.vacuum(lake_settings, spark, retain_hours=1)
    assert maintenance.version(spark, logins) == version  # nothing ran


def test_vacuum_honours_the_retention_and_force_deletes_replaced_files(
    spark: Any, lake_settings: Settings, logins: str
) -> None:
    check = spark.conf.get(maintenance.RETENTION_CHECK, None)
    [kept] = maintenance.vacuum(lake_settings, spark, retain_hours=200, tables=["silver.login"])
    assert kept.files_deleted == 0  # the files OPTIMIZE replaced are minutes old
    start = spark.sql(f"DESCRIBE HISTORY delta.`{logins}` LIMIT 2").collect()[-1]
    assert start.operation == "VACUUM START"
    assert start.operationParameters["specifiedRetentionMillis"] == str(200 * 3_600_000)
    [forced] = maintenance.vacuum(lake_settings, spark, retain_hours=0, tables=["silver.login"], force=True)
    assert forced.files_deleted  # the replaced files (and their checksums)
    assert len(list(Path(logins).glob("event_date=*/*.parquet"))) == 2
    assert rows(spark, logins)  # the current version is intact
    assert spark.conf.get(maintenance.RETENTION_CHECK, None) == check  # restored after the forced run


def test_the_threshold_follows_the_table_property() -> None:
    assert maintenance.threshold_hours({"properties": {}}) == 168
    assert (
        maintenance.threshold_hours({"properties": {maintenance.RETENTION_PROPERTY: "interval 30 days"}})
        == 720
    )
    assert (
        maintenance.threshold_hours({"properties": {maintenance.RETENTION_PROPERTY: "interval 1 hours"}}) == 1
    )
