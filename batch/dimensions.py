"""Dimensions of silver: titles (the compacted catalog), users, devices, CDN edges.

``dim_titles`` is rebuilt from ``silver/title`` (the latest version of each title; the
catalog is small). The others are MERGEd from each run's new rows with order-independent
rules, so any replay or split of the same rows gives the same table: ``first_seen`` is
the minimum, ``last_seen`` the maximum, attributes of the first sighting (``home_country``)
come from the earliest event and current attributes (``os``, ``app_version``, ``pop``) from
the latest, ties broken by value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batch.lake import Audit, unaudited

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

TITLES = "dim_titles"
USERS = "dim_users"
DEVICES = "dim_devices"
EDGES = "dim_cdn_edges"


@dataclass(frozen=True)
class Seen:
    """A dimension kept by first/last sighting: its key, attributes of the first sighting
    and attributes of the latest."""

    name: str
    key: str
    first: tuple[str, ...] = ()
    last: tuple[str, ...] = ()


SEEN = (
    Seen(USERS, "user_id", first=("home_country",)),
    Seen(DEVICES, "device_id", last=("user_id", "device_type", "os", "app_version")),
    Seen(EDGES, "edge_id", last=("pop",)),
)


def latest_titles(titles: DataFrame) -> DataFrame:
    """The latest published version of each title (by event time, then Kafka offset)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("title_id").orderBy(F.col("event_time").desc(), F.col("_kafka_offset").desc())
    latest = titles.withColumn("_n", F.row_number().over(order)).where("_n = 1")
    return latest.select(
        "title_id", "name", "kind", "genres", "duration_s", "release_year",
        F.col("event_time").alias("updated_at"),
    )  # fmt: skip


def refresh_titles(spark: SparkSession, source: str, target: str, audit: Audit = unaudited) -> None:
    frame = audit(TITLES, latest_titles(spark.read.format("delta").load(source)))
    frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(target)


def sightings(new: dict[str, DataFrame]) -> dict[str, DataFrame]:
    """Rows of ``key, event_time`` + attributes for each first/last-seen dimension."""
    from pyspark.sql import functions as F

    client = [frame for frame in new.values() if "user_id" in frame.columns]
    found: dict[str, DataFrame] = {}
    if client:
        users = [f.select("user_id", F.col("country").alias("home_country"), "event_time") for f in client]
        devices = [f.select("device_id", *SEEN[1].last, "event_time") for f in client]
        found[USERS], found[DEVICES] = _union(users), _union(devices)
    if "cdn_request" in new:
        found[EDGES] = new["cdn_request"].select("edge_id", "pop", "event_time")
    return found


def summarize(rows: DataFrame, seen: Seen) -> DataFrame:
    """One row per key: first and last sighting and the attributes that go with them."""
    from pyspark.sql import functions as F

    first = F.min(F.struct("event_time", *seen.first)) if seen.first else None
    last = F.max(F.struct("event_time", *seen.last)) if seen.last else None
    aggregates = [F.min("event_time").alias("first_seen"), F.max("event_time").alias("last_seen")]
    aggregates += [x.alias(n) for x, n in ((first, "_first"), (last, "_last")) if x is not None]
    summary = rows.where(F.col(seen.key).isNotNull()).groupBy(seen.key).agg(*aggregates)
    columns = [F.col(f"_first.{c}").alias(c) for c in seen.first]
    columns += [F.col(f"_last.{c}").alias(c) for c in seen.last]
    return summary.select(seen.key, *columns, "first_seen", "last_seen")


def merge_seen(spark: SparkSession, path: str, rows: DataFrame, seen: Seen, audit: Audit = unaudited) -> None:
    from delta.tables import DeltaTable

    summary = audit(seen.name, summarize(rows, seen))
    if not DeltaTable.isDeltaTable(spark, path):
        summary.write.format("delta").save(path)
        return
    earlier = f"{_sighting('s', 'first_seen', seen.first)} < {_sighting('t', 'first_seen', seen.first)}"
    later = f"{_sighting('s', 'last_seen', seen.last)} > {_sighting('t', 'last_seen', seen.last)}"
    updates: dict[str, str | Column] = {
        "first_seen": "least(t.first_seen, s.first_seen)",
        "last_seen": "greatest(t.last_seen, s.last_seen)",
    }
    updates |= {c: f"CASE WHEN {earlier} THEN s.{c} ELSE t.{c} END" for c in seen.first}
    updates |= {c: f"CASE WHEN {later} THEN s.{c} ELSE t.{c} END" for c in seen.last}
    (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(summary.alias("s"), f"t.{seen.key} = s.{seen.key}")
        .whenMatchedUpdate(set=updates)
        .whenNotMatchedInsertAll()
        .execute()
    )


def _sighting(alias: str, time: str, columns: tuple[str, ...]) -> str:
    """``struct(time, columns...)`` of one side of the MERGE: the order summarize uses."""
    return f"struct({', '.join(f'{alias}.{c}' for c in (time, *columns))})"


def update(
    spark: SparkSession, table: Callable[[str], str], new: dict[str, DataFrame], audit: Audit = unaudited
) -> list[str]:
    """MERGE this run's sightings into users, devices and CDN edges; returns the
    dimensions merged into."""
    rows = sightings(new)
    merged = [seen.name for seen in SEEN if seen.name in rows]
    for seen in SEEN:
        if seen.name in rows:
            merge_seen(spark, table(seen.name), rows[seen.name], seen, audit)
    return merged


def _union(frames: list[DataFrame]) -> DataFrame:
    first, *rest = frames
    for frame in rest:
        first = first.unionByName(frame)
    return first
