"""Silver: bronze events typed, flat, pseudonymized and deduplicated; playback sessions;
dimensions. Contracts of every table: ``batch/silver.yml``.

Each run reads, per bronze table, only the rows past a high-water mark of
``(_kafka_partition, _kafka_offset)`` kept in ``silver/_state/bronze_offsets`` (bronze
appends each partition in offset order, so everything at or below the mark is already
in silver). The new rows are flattened (envelope fields become columns), every ``pii``
field is replaced by its HMAC-SHA256 under the pseudonymization key, duplicates are
dropped by ``event_id`` and the rest is MERGEd (insert when not matched) into
``silver/<event_type>``. Then playback sessions and dimensions are updated from the
same new rows, and only then does the mark advance.

Guarantee: effectively once. A run that dies before the mark advances is replayed by
the next; every write is a MERGE on the table's key, so a replay changes nothing.

Late events: the watermark of a table is its newest ``event_time`` when the run starts.
An event older than the watermark minus the allowed lateness (3 days by default), or
more than a day ahead of its Kafka timestamp, is not merged: it goes to
``silver/_late`` with the reason, so closed event_date partitions stay as published. An
event the table already holds is never late (the replay of a run that died after
merging it sees a watermark raised by its own rows).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import dimensions, pseudonymize, sessions
from batch import spark as spark_support
from batch.lake import Audit, Lake, exists, unaudited
from reelpulse.contract import Contract, EventType
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("reelpulse.batch.silver")

ENVELOPE_COLUMNS = (
    "event_id", "event_time", "user_id", "profile_id", "session_id", "device_id",
    "device_type", "os", "app_version", "country", "client_ip",
)  # fmt: skip
META_COLUMNS = ("_kafka_topic", "_kafka_partition", "_kafka_offset", "_kafka_timestamp", "_ingested_at")
LATE = "_late"
TOO_LATE = "too_late"
FUTURE = "future_event_time"


@dataclass(frozen=True)
class Policy:
    """How late an event may be, and when a session without a stop is over (defaults:
    the ``REELPULSE_SILVER_*`` settings)."""

    allowed_lateness: dt.timedelta
    max_clock_skew: dt.timedelta
    session_timeout: dt.timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            dt.timedelta(days=settings.silver_allowed_lateness_days),
            dt.timedelta(hours=settings.silver_max_clock_skew_hours),
            dt.timedelta(minutes=settings.silver_session_timeout_minutes),
        )


CONTRACT = Path(__file__).with_name("silver.yml")


def load_contract() -> dict[str, Any]:
    """The silver tables' contracts: policies, columns, keys, partitioning, expectations."""
    import yaml

    return dict(yaml.safe_load(CONTRACT.read_text()))


# --- pure transformations --------------------------------------------------------------------


def flatten(frame: DataFrame, event: EventType) -> DataFrame:
    """Envelope fields as top-level columns (``envelope.device.os`` -> ``os``), then the
    event's own fields, then the bronze coordinates and ``event_date``."""
    from pyspark.sql import functions as F

    own = [f["name"] for f in event.schema["fields"] if f["name"] != pseudonymize.ENVELOPE]
    envelope = []
    if pseudonymize.ENVELOPE in frame.columns:
        envelope = [F.col(path).alias(path.split(".")[-1]) for path in envelope_paths(event)]
    meta = [c for c in META_COLUMNS if c in frame.columns]
    return frame.select(*envelope, *own, *meta, "event_date")


def envelope_paths(event: EventType) -> list[str]:
    """Dotted paths of the envelope's leaf fields, in schema order."""
    paths = []
    for field in event.resolved["fields"]:
        if field["name"] == pseudonymize.ENVELOPE:
            paths += _leaves(field["type"], pseudonymize.ENVELOPE)
    return paths


def _leaves(record: dict[str, Any], prefix: str) -> list[str]:
    found = []
    for field in record["fields"]:
        t = field["type"]
        if isinstance(t, dict) and t.get("type") == "record":
            found += _leaves(t, f"{prefix}.{field['name']}")
        else:
            found.append(f"{prefix}.{field['name']}")
    return found


def keys(event: EventType, columns: list[str]) -> tuple[str, ...]:
    """The dedup key: ``event_id``, or for an event without one (a catalog ``title``) its
    Kafka key and ``event_time`` (one row per published version)."""
    if "event_id" in columns:
        return ("event_id",)
    return (event.key_path[-1], "event_time")


def dedupe(frame: DataFrame, key: tuple[str, ...]) -> DataFrame:
    """One row per key: the copy Kafka received first (lowest partition, offset)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = [F.col(c) for c in ("_kafka_partition", "_kafka_offset") if c in frame.columns]
    window = Window.partitionBy(*key).orderBy(*(order or [F.lit(1)]))
    return frame.withColumn("_n", F.row_number().over(window)).where("_n = 1").drop("_n")


def late_reason(watermark: dt.datetime | None, policy: Policy) -> Column:
    """Why a row is not merged into its table (null when it is on time)."""
    from pyspark.sql import functions as F

    reason = F.lit(None).cast("string")
    seconds = int(policy.max_clock_skew.total_seconds())
    skew = F.col("_kafka_timestamp") + F.expr(f"INTERVAL {seconds} SECONDS")
    reason = F.when(F.col("event_time") > skew, F.lit(FUTURE)).otherwise(reason)
    if watermark is not None:
        cutoff = F.lit(watermark - policy.allowed_lateness)
        reason = F.when(F.col("event_time") < cutoff, F.lit(TOO_LATE)).otherwise(reason)
    return reason


def late_rows(frame: DataFrame, event: EventType, key: tuple[str, ...], watermark: Any) -> DataFrame:
    """Rows of ``silver/_late``: which event, why, and the pseudonymized row as JSON."""
    from pyspark.sql import functions as F

    payload = F.to_json(F.struct(*[c for c in frame.columns if c != "_late_reason"]))
    return frame.select(
        F.lit(event.name).alias("event_type"),
        F.concat_ws("|", *[F.col(c).cast("string") for c in key]).alias("event_key"),
        F.col("event_time"),
        F.col("_late_reason").alias("reason"),
        F.lit(watermark).cast("timestamp").alias("watermark"),
        *[F.col(c) for c in META_COLUMNS if c in frame.columns],
        payload.alias("payload"),
        F.col("event_date"),
    )


# --- state: bronze high-water marks ----------------------------------------------------------


def read_offsets(spark: SparkSession, lake: Lake) -> dict[str, dict[int, int]]:
    """The last bronze offset merged, per table and Kafka partition."""
    if not exists(spark, lake.offsets):
        return {}
    marks: dict[str, dict[int, int]] = {}
    for row in spark.read.format("delta").load(lake.offsets).collect():
        marks.setdefault(row.table, {})[row.kafka_partition] = row.kafka_offset
    return marks


def past_mark(marks: dict[int, int]) -> Column:
    """Rows after the high-water mark: unknown partitions, or offsets above the mark."""
    from pyspark.sql import functions as F

    partition, offset = F.col("_kafka_partition"), F.col("_kafka_offset")
    condition = ~partition.isin(list(marks)) if marks else F.lit(True)
    for p, mark in sorted(marks.items()):
        condition = condition | ((partition == p) & (offset > mark))
    return condition


def write_offsets(spark: SparkSession, lake: Lake, marks: dict[str, dict[int, int]]) -> None:
    rows = [(t, p, o) for t, parts in sorted(marks.items()) for p, o in sorted(parts.items())]
    schema = "table string, kafka_partition int, kafka_offset long"
    spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(lake.offsets)


# --- Delta writes ----------------------------------------------------------------------------


def merge_new(
    spark: SparkSession, path: str, frame: DataFrame, key: tuple[str, ...], partition: str | None
) -> None:
    """Insert the rows whose key is not in the table yet (creating it on first use)."""
    from delta.tables import DeltaTable

    if not exists(spark, path):
        writer = frame.write.format("delta")
        (writer.partitionBy(partition) if partition else writer).save(path)
        return
    on = [f"t.`{c}` <=> s.`{c}`" for c in key]
    if partition:  # same key, same event time: lets Delta prune partitions
        on.append(f"t.`{partition}` = s.`{partition}`")
    (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(frame.alias("s"), " AND ".join(on))
        .withSchemaEvolution()
        .whenNotMatchedInsertAll()
        .execute()
    )


def watermark(spark: SparkSession, path: str) -> dt.datetime | None:
    """Newest event time in a silver table (None before its first row)."""
    if not exists(spark, path):
        return None
    newest = spark.read.format("delta").load(path).agg({"event_time": "max"}).collect()[0][0]
    return newest if isinstance(newest, dt.datetime) else None


# --- the job ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SilverRun:
    """What one silver run wrote: per event table with new bronze rows, ``merged`` and
    ``late`` counts; and the other silver tables it wrote (sessions, dimensions, ``_late``)."""

    events: dict[str, dict[str, int]]
    derived: list[str]

    @property
    def tables(self) -> list[str]:
        """Every silver table this run wrote to, in name order."""
        return sorted({*self.events, *self.derived})


@dataclass
class TableRun:
    """What one event table contributed to a run."""

    event: EventType
    rows: DataFrame
    marks: dict[int, int]
    merged: int
    late: int
    cached: DataFrame


def process_table(
    spark: SparkSession,
    lake: Lake,
    event: EventType,
    new: DataFrame,
    key: bytes,
    policy: Policy,
    audit: Audit = unaudited,
) -> TableRun:
    """New bronze rows of one event type into silver and ``_late``; returns the on-time
    rows (from ``cached``, which the caller unpersists) and the new high-water marks."""
    from pyspark.sql import functions as F

    path = lake.silver(event.name)
    flat = pseudonymize.pseudonymize(flatten(new, event), pseudonymize.pii_columns(event), key)
    key_columns = keys(event, flat.columns)
    mark = watermark(spark, path)
    rows = dedupe(flat, key_columns).withColumn("_late_reason", late_reason(mark, policy))
    rows = rows.persist()
    on_time = rows.where(F.col("_late_reason").isNull()).drop("_late_reason")
    late = rows.where(F.col("_late_reason").isNotNull())
    counts: dict[bool, int] = dict(rows.groupBy(F.col("_late_reason").isNull()).count().collect())
    merged, late_count = counts.get(True, 0), counts.get(False, 0)
    if merged:
        on_time = audit(event.name, on_time)
        merge_new(spark, path, on_time, key_columns, "event_date")
    if late_count:
        late = not_in_table(spark, path, late, key_columns)
        late_count = late.count()
    if late_count:
        merge_new(spark, lake.silver(LATE), late_rows(late, event, key_columns, mark), LATE_KEY, "event_date")
    marks = {r[0]: r[1] for r in new.groupBy("_kafka_partition").agg(F.max("_kafka_offset")).collect()}
    return TableRun(event, on_time, marks, merged, late_count, cached=rows)


LATE_KEY = ("event_type", "event_key")


def not_in_table(spark: SparkSession, path: str, rows: DataFrame, key: tuple[str, ...]) -> DataFrame:
    """Rows whose key the table does not hold. A run that died after merging a table is
    replayed against a watermark its own rows raised; rows it merged then are not late now."""
    if not exists(spark, path):
        return rows
    return rows.join(spark.read.format("delta").load(path).select(*key), list(key), "left_anti")


def new_bronze_rows(spark: SparkSession, path: str, marks: dict[int, int]) -> DataFrame:
    return spark.read.format("delta").load(path).where(past_mark(marks)).persist()


def run(
    settings: Settings,
    spark: SparkSession | None = None,
    *,
    pseudonymization_key: bytes,
    policy: Policy | None = None,
    tables: list[str] | None = None,
    audit: Audit = unaudited,
) -> SilverRun:
    """Bring silver up to date with bronze. Returns, per event table with new bronze rows,
    how many distinct rows were offered to the MERGE (``merged``; a replayed row inserts
    nothing) and how many went to ``_late``, and the other tables it wrote. ``audit`` sees
    every table's rows before they are written (the quality gate): when it raises, the run
    stops and the marks stay."""
    pseudonymize.pads(pseudonymization_key)  # fail before any work on a bad key
    policy = policy or Policy.from_settings(settings)
    contract = Contract(settings.schemas_dir)
    spark = spark or spark_support.session(settings, "reelpulse-silver")
    lake = Lake(settings.lake_dir)
    marks = read_offsets(spark, lake)
    runs: list[TableRun] = []
    cached: list[DataFrame] = []
    try:
        for event in contract:
            if (tables and event.name not in tables) or not exists(spark, lake.bronze(event.name)):
                continue
            new = new_bronze_rows(spark, lake.bronze(event.name), marks.get(event.name, {}))
            cached.append(new)
            if new.isEmpty():
                continue
            started = time.monotonic()
            done = process_table(spark, lake, event, new, pseudonymization_key, policy, audit)
            cached.append(done.cached)
            runs.append(done)
            log.info(
                "silver: %s merged %s, late %s in %.1fs",
                event.name, done.merged, done.late, time.monotonic() - started,
            )  # fmt: skip
        started = time.monotonic()
        derived = _derive(spark, lake, runs, policy, audit)
        log.info("silver: sessions and dimensions in %.1fs", time.monotonic() - started)
        for done in runs:
            marks[done.event.name] = {**marks.get(done.event.name, {}), **done.marks}
        if runs:
            write_offsets(spark, lake, marks)
    finally:
        for frame in cached:
            frame.unpersist()
    return SilverRun(
        {done.event.name: {"merged": done.merged, "late": done.late} for done in runs},
        sorted({*derived, *([LATE] if any(done.late for done in runs) else [])}),
    )


def _derive(spark: SparkSession, lake: Lake, runs: list[TableRun], policy: Policy, audit: Audit) -> list[str]:
    """Dimensions and playback sessions from the rows this run merged; returns the tables
    written."""
    new = {done.event.name: done.rows for done in runs}
    written = []
    if "title" in new:
        dimensions.refresh_titles(spark, lake.silver("title"), lake.silver(dimensions.TITLES), audit)
        written.append(dimensions.TITLES)
    written += dimensions.update(spark, lake.silver, new, audit)
    playback = {name: rows for name, rows in new.items() if name in sessions.PLAYBACK_EVENTS}
    if playback:
        sessions.update(spark, lake.silver, playback, policy.session_timeout, audit)
        written.append(sessions.SESSIONS)
    return written
