"""Upkeep of the lake's Delta tables: compaction (OPTIMIZE, optionally Z-ordered) and VACUUM.

Streaming bronze and incremental silver append many small files; :func:`optimize` rewrites
them into few large ones (a new table version with the same rows, ``dataChange = false``).
The files it replaces stay on storage for readers of older versions until :func:`vacuum`
deletes every file that no version within the retention still needs.

The retention is a safety margin, not a detail: a file VACUUM deletes may still be read by
a query that started on an older snapshot, or be part of a write that has not committed
yet (that write is then lost), and time travel to a version older than the retention stops
working. Delta refuses a retention below the table's ``delta.deletedFileRetentionDuration``
(7 days by default); so does :func:`vacuum`, before touching any table, unless ``force``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batch import lake
from batch.spark import session_conf
from reelpulse.errors import ReelpulseError
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("reelpulse.batch.maintenance")

SAFETY_THRESHOLD_HOURS = 168.0  # Delta's default delta.deletedFileRetentionDuration
RETENTION_PROPERTY = "delta.deletedFileRetentionDuration"
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
# Delta 4 ignores a VACUUM retention other than 0 hours unless this (internal) flag is off,
# and uses the table's delta.deletedFileRetentionDuration instead: a 24 h request would keep
# 7 days and, worse, a 720 h request would delete after 7 days.
RETENTION_WINDOW_IGNORE = "spark.databricks.delta.vacuum.retentionWindowIgnore.enabled"
# VACUUM lists a table's files in this many tasks, 10000 unless configured: on a small
# machine scheduling them costs far more than the listing (seconds become minutes).
LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
HOURS = {"week": 168.0, "day": 24.0, "hour": 1.0, "minute": 1 / 60, "second": 1 / 3600}
INTERVAL = re.compile(r"(\d+(?:\.\d+)?)\s*(week|day|hour|minute|second)s?", re.IGNORECASE)


class MaintenanceError(ReelpulseError):
    """A maintenance command was refused; nothing was changed."""


@dataclass(frozen=True)
class TableResult:
    """What one command did to one table: the data files of its current version before and
    after, the files deleted from storage (VACUUM) and the table version afterwards."""

    table: str
    path: str
    files_before: int
    files_after: int
    version: int
    files_deleted: int | None = None


def select(
    settings: Settings, layers: Sequence[str] = lake.LAYERS, tables: Sequence[str] | None = None
) -> list[lake.LakeTable]:
    """The lake's tables in ``layers``, narrowed to ``tables`` (qualified names such as
    ``silver.playback_sessions``) when given; a name that is not in the lake is an error."""
    unknown_layers = sorted(set(layers) - set(lake.LAYERS))
    if unknown_layers:
        raise MaintenanceError(f"unknown layer(s) {', '.join(unknown_layers)}: use {', '.join(lake.LAYERS)}")
    found = [t for t in lake.tables(settings.lake_dir) if t.layer in layers]
    if tables is None:
        return found
    missing = sorted(set(tables) - {t.qualified for t in found})
    if missing:
        raise MaintenanceError(
            f"no Delta table {', '.join(missing)} in {settings.lake_dir} ({', '.join(layers)})"
        )
    return [t for t in found if t.qualified in tables]


# --- OPTIMIZE --------------------------------------------------------------------------------


def optimize(
    settings: Settings,
    spark: SparkSession,
    layers: Sequence[str] = lake.LAYERS,
    tables: Sequence[str] | None = None,
    zorder_by: Mapping[str, str] | None = None,
) -> list[TableResult]:
    """Compact every selected table; a table named in ``zorder_by`` (qualified name ->
    column) is Z-ordered by that column instead (not a partition column)."""
    zorder_by = zorder_by or {}
    selected = select(settings, layers, tables)
    unknown = sorted(set(zorder_by) - {t.qualified for t in selected})
    if unknown:
        raise MaintenanceError(f"Z-order asked for table(s) not selected: {', '.join(unknown)}")
    return [_optimize(spark, t, zorder_by.get(t.qualified)) for t in selected]


def _optimize(spark: SparkSession, table: lake.LakeTable, zorder: str | None) -> TableResult:
    from delta.tables import DeltaTable

    before = detail(spark, table.path)["numFiles"]
    builder = DeltaTable.forPath(spark, table.path).optimize()
    result = builder.executeZOrderBy(zorder) if zorder else builder.executeCompaction()
    metrics = result.first()["metrics"]  # type: ignore[index]
    after = before - metrics["numFilesRemoved"] + metrics["numFilesAdded"]
    log.info("optimize %s: %d -> %d files", table.qualified, before, after)
    return TableResult(table.qualified, table.path, before, after, version(spark, table.path))


# --- VACUUM ----------------------------------------------------------------------------------


def vacuum(
    settings: Settings,
    spark: SparkSession,
    retain_hours: float = SAFETY_THRESHOLD_HOURS,
    layers: Sequence[str] = lake.LAYERS,
    tables: Sequence[str] | None = None,
    *,
    force: bool = False,
) -> list[TableResult]:
    """VACUUM every selected table, keeping the files versions of the last ``retain_hours``
    need. A retention below a table's safety threshold is refused before any table is
    touched, unless ``force`` (then Delta's own check is off for this session meanwhile)."""
    if retain_hours < 0:
        raise MaintenanceError(f"the retention must be 0 hours or more, not {retain_hours}")
    selected = select(settings, layers, tables)
    details = {t.path: detail(spark, t.path) for t in selected}
    too_short = {t.qualified: threshold_hours(details[t.path]) for t in selected}
    too_short = {name: hours for name, hours in too_short.items() if retain_hours < hours}
    if too_short and not force:
        raise MaintenanceError(_refusal(retain_hours, too_short))
    with retention_check_disabled(spark) if too_short else nullcontext():
        return [_vacuum(spark, t, details[t.path]["numFiles"], retain_hours) for t in selected]


def _refusal(retain_hours: float, too_short: Mapping[str, float]) -> str:
    names = ", ".join(f"{name} ({hours:g} h)" for name, hours in too_short.items())
    return (
        f"refusing VACUUM with {retain_hours:g} hours of retention, below the safety threshold of {names}. "
        "It would delete files that a query still reading an older snapshot needs (it fails) and files "
        "a running writer has not committed yet (its write is lost), and time travel to versions older "
        f"than {retain_hours:g} hours would stop working. Keep the retention, or pass --force when no "
        "job reads or writes these tables."
    )


def _vacuum(spark: SparkSession, table: lake.LakeTable, files: int, retain_hours: float) -> TableResult:
    deleted, after = vacuum_table(spark, table.path, retain_hours)
    log.info("vacuum %s: %s files deleted", table.qualified, deleted)
    return TableResult(table.qualified, table.path, files, files, after, deleted)


def vacuum_table(spark: SparkSession, path: str, retain_hours: float) -> tuple[int | None, int]:
    """VACUUM one table; returns the files deleted (from the ``VACUUM END`` commit, None
    when Delta did not log it) and the table version afterwards."""
    from delta.tables import DeltaTable

    table = DeltaTable.forPath(spark, path)
    listing = spark.conf.get(LISTING_PARALLELISM, None) or str(spark.sparkContext.defaultParallelism)
    with session_conf(spark, {RETENTION_WINDOW_IGNORE: "false", LISTING_PARALLELISM: listing}):
        table.vacuum(retain_hours)
    last = table.history(1).first()
    assert last is not None
    metrics = last["operationMetrics"] or {}
    deleted = int(metrics["numDeletedFiles"]) if last["operation"] == "VACUUM END" else None
    return deleted, int(last["version"])


def retention_check_disabled(spark: SparkSession) -> AbstractContextManager[None]:
    """Turn Delta's VACUUM retention check off in this Spark session, and restore it after."""
    return session_conf(spark, {RETENTION_CHECK: "false"})


def threshold_hours(details: Mapping[str, Any]) -> float:
    """The table's ``delta.deletedFileRetentionDuration`` in hours (Delta's default when
    unset; an ``interval 30 days`` value counts its week/day/hour/minute/second parts)."""
    value = (details.get("properties") or {}).get(RETENTION_PROPERTY)
    parts = INTERVAL.findall(value or "")
    if not parts:
        return SAFETY_THRESHOLD_HOURS
    return sum(float(number) * HOURS[unit.lower()] for number, unit in parts)


# --- table facts -----------------------------------------------------------------------------


def detail(spark: SparkSession, path: str) -> dict[str, Any]:
    """``DESCRIBE DETAIL`` of a table: ``numFiles``, ``properties``, ``tableFeatures``, ..."""
    from delta.tables import DeltaTable

    row = DeltaTable.forPath(spark, path).detail().first()
    assert row is not None
    return row.asDict()


def version(spark: SparkSession, path: str) -> int:
    """The table's current version."""
    from delta.tables import DeltaTable

    last = DeltaTable.forPath(spark, path).history(1).first()
    assert last is not None
    return int(last["version"])
