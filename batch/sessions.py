"""Playback sessions: the playback events of one session_id become one row.

Measures (see ``batch/silver.yml``, table ``playback_sessions``):

- watch time: per heartbeat ``interval_ms - rebuffer_ms``, minus the ``paused_ms`` of
  every resume (a heartbeat's interval covers the pause before it). ``interval_ms`` is
  authoritative: a heartbeat may cover more content than the event-time gap to the
  previous one (clients batch, the simulator compresses time), so event times are never
  used to measure watching.
- rebuffering: sums of the heartbeats' ``rebuffer_count`` and ``rebuffer_ms``; ratio
  ``rebuffer_ms / (watch_time_ms + rebuffer_ms)``.
- bitrate: heartbeat bitrates averaged weighted by their ``interval_ms``.
- completion: the stop says COMPLETED, or the furthest position reached is at least 95%
  of the title's running time.
- exit reason: the stop's reason; a session without a stop whose last event is older
  than the timeout (relative to the newest event time in the data, never the wall
  clock) is closed with ``TIMEOUT``; otherwise it stays ``OPEN`` (exit_reason null) and
  is recomputed by every run until it closes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from batch.lake import Audit, exists, unaudited

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SESSIONS = "playback_sessions"
PLAYBACK_EVENTS = (
    "playback_start", "playback_heartbeat", "playback_pause", "playback_resume",
    "playback_seek", "playback_stop", "playback_error", "bitrate_switch",
)  # fmt: skip
COMPLETION_SHARE = 0.95
TIMEOUT = "TIMEOUT"

# Columns of the long form: every playback event has these or gets a typed null.
FIELDS = {
    "session_id": "string", "event_time": "timestamp", "user_id": "string",
    "profile_id": "string", "device_type": "string", "country": "string", "title_id": "string",
    "cdn_edge": "string", "startup_time_ms": "int", "success": "boolean",
    "start_position_ms": "long", "position_ms": "long", "to_position_ms": "long",
    "interval_ms": "int", "rebuffer_count": "int", "rebuffer_ms": "int", "bitrate_kbps": "int",
    "paused_ms": "long", "reason": "string", "fatal": "boolean",
}  # fmt: skip


def long_form(name: str, frame: DataFrame) -> DataFrame:
    """One silver playback table as rows of ``event_type`` + :data:`FIELDS`."""
    from pyspark.sql import functions as F

    columns = [(F.col(c) if c in frame.columns else F.lit(None)).cast(t).alias(c) for c, t in FIELDS.items()]
    return frame.select(F.lit(name).alias("event_type"), *columns)


def playback_events(frames: dict[str, DataFrame]) -> DataFrame:
    first, *rest = [long_form(name, frame) for name, frame in sorted(frames.items())]
    for frame in rest:
        first = first.unionByName(frame)
    return first


def _of(event_type: str, column: Column) -> Column:
    from pyspark.sql import functions as F

    return F.when(F.col("event_type") == event_type, column)


def _measures() -> list[Column]:
    from pyspark.sql import functions as F

    beat = "playback_heartbeat"
    c = F.col
    return [
        F.max("user_id").alias("user_id"),
        F.max("profile_id").alias("profile_id"),
        F.max("title_id").alias("title_id"),
        F.max("device_type").alias("device_type"),
        F.max("country").alias("country"),
        F.coalesce(F.max(_of("playback_start", c("cdn_edge"))), F.max("cdn_edge")).alias("cdn_edge"),
        F.min(_of("playback_start", c("event_time"))).alias("_start_at"),
        F.min("event_time").alias("_first_at"),
        F.max(_of("playback_stop", c("event_time"))).alias("_stop_at"),
        F.max("event_time").alias("last_event_at"),
        F.max(_of("playback_start", c("startup_time_ms"))).alias("startup_time_ms"),
        F.max(_of("playback_start", ~c("success"))).alias("play_failed"),
        F.sum(_of(beat, c("interval_ms") - c("rebuffer_ms"))).alias("_played_ms"),
        F.sum(_of("playback_resume", c("paused_ms"))).alias("_paused_ms"),
        F.sum(_of(beat, c("rebuffer_count"))).alias("_rebuffer_count"),
        F.sum(_of(beat, c("rebuffer_ms"))).alias("_rebuffer_ms"),
        F.sum(_of(beat, c("bitrate_kbps").cast("double") * c("interval_ms"))).alias("_kbps_ms"),
        F.sum(_of(beat, c("interval_ms"))).alias("_interval_ms"),
        F.max(F.coalesce(c("position_ms"), c("to_position_ms"), c("start_position_ms"))).alias(
            "max_position_ms"
        ),
        F.max_by(_of("playback_stop", c("reason")), _of("playback_stop", c("event_time"))).alias(
            "_stop_reason"
        ),
        F.coalesce(F.max(_of("playback_error", c("fatal"))), F.lit(False)).alias("fatal_error"),
        F.count(F.lit(1)).alias("event_count"),
    ]


def sessionize(events: DataFrame, titles: DataFrame, timeout: dt.timedelta, as_of: dt.datetime) -> DataFrame:
    """One row per session_id of ``events`` (the long form of :func:`playback_events`).
    ``titles`` gives ``title_id`` and ``duration_s``; ``as_of`` is the newest event time
    in the data, against which ``timeout`` closes sessions that never sent a stop."""
    from pyspark.sql import functions as F

    per_session = events.groupBy("session_id").agg(*_measures())
    durations = titles.select("title_id", (F.col("duration_s").cast("long") * 1000).alias("_duration_ms"))
    return per_session.join(F.broadcast(durations), "title_id", "left").select(*_outputs(timeout, as_of))


def _outputs(timeout: dt.timedelta, as_of: dt.datetime) -> list[Column]:
    from pyspark.sql import functions as F

    c = F.col
    played = c("_played_ms") - F.coalesce(c("_paused_ms"), F.lit(0))
    watch = F.greatest(F.coalesce(played, F.lit(0)), F.lit(0))
    rebuffer_ms = F.coalesce(c("_rebuffer_ms"), F.lit(0)).cast("long")
    timed_out = c("last_event_at") < F.lit(as_of - timeout)
    exit_reason = F.coalesce(c("_stop_reason"), F.when(timed_out, F.lit(TIMEOUT)))
    reached = c("max_position_ms") >= c("_duration_ms") * COMPLETION_SHARE
    completed = (c("_stop_reason") == "COMPLETED") | F.coalesce(reached, F.lit(False))
    started_at = F.coalesce(c("_start_at"), c("_first_at"))
    return [
        c("session_id"), c("user_id"), c("profile_id"), c("title_id"), c("device_type"), c("country"),
        c("cdn_edge"),
        started_at.alias("started_at"),
        F.coalesce(c("_stop_at"), c("last_event_at")).alias("ended_at"),
        c("last_event_at"),
        c("_start_at").isNotNull().alias("has_start"),
        c("startup_time_ms"),
        F.coalesce(c("play_failed"), F.lit(False)).alias("play_failed"),
        watch.cast("long").alias("watch_time_ms"),
        F.coalesce(c("_rebuffer_count"), F.lit(0)).cast("long").alias("rebuffer_count"),
        rebuffer_ms.alias("rebuffer_ms"),
        (rebuffer_ms / F.nullif(watch + rebuffer_ms, F.lit(0))).alias("rebuffer_ratio"),
        (c("_kbps_ms") / F.nullif(c("_interval_ms"), F.lit(0))).alias("avg_bitrate_kbps"),
        c("max_position_ms"),
        F.coalesce(completed, F.lit(False)).alias("completed"),
        c("fatal_error"),
        exit_reason.alias("exit_reason"),
        F.when(exit_reason.isNull(), F.lit("OPEN")).otherwise(F.lit("CLOSED")).alias("state"),
        c("event_count").cast("long").alias("event_count"),
        F.to_date(started_at).alias("started_date"),
    ]  # fmt: skip


def update(
    spark: SparkSession,
    table: Callable[[str], str],
    new: dict[str, DataFrame],
    timeout: dt.timedelta,
    audit: Audit = unaudited,
) -> None:
    """Recompute the sessions touched by ``new`` playback rows, and every session still
    open, from all their silver events; MERGE them into ``playback_sessions``."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = table(SESSIONS)
    stored = {n: _read(spark, table(n)) for n in PLAYBACK_EVENTS if exists(spark, table(n))}
    every = playback_events(stored)
    affected = playback_events(new).select("session_id")
    if exists(spark, path):
        still_open = spark.read.format("delta").load(path).where("state = 'OPEN'").select("session_id")
        affected = affected.unionByName(still_open)
    as_of = every.agg(F.max("event_time")).collect()[0][0]
    events = every.join(F.broadcast(affected.distinct()), "session_id", "left_semi")
    rows = audit(SESSIONS, sessionize(events, _titles(spark, table), timeout, as_of))
    if not exists(spark, path):
        rows.write.format("delta").partitionBy("started_date").save(path)
        return
    (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(rows.alias("s"), "t.session_id = s.session_id")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )


def _titles(spark: SparkSession, table: Callable[[str], str]) -> DataFrame:
    from batch.dimensions import TITLES

    if exists(spark, table(TITLES)):
        return spark.read.format("delta").load(table(TITLES))
    return spark.createDataFrame([], "title_id string, duration_s int")


def _read(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.format("delta").load(path)
