"""Gold: the tables products read, rebuilt from silver. Contracts: ``batch/gold.yml``.

Every table is a pure function of silver DataFrames (tested on tiny hand-built inputs)
and is listed in :data:`TABLES` with its silver inputs, its partitioning and the column
that holds a pseudonymized user id, if any (for erasure and the quality gates).

Guarantee: a full recompute. :func:`run` rebuilds each requested table from all of
silver and overwrites it, so a run after late events, an erasure in silver or a replay
gives the same rows as a fresh build: same silver, same gold. Sums of doubles are taken
in decimal and percentiles are exact, so nothing depends on the order Spark adds rows in.

Activity (daily/weekly/monthly actives, retention, experiment days): a user is active on
a date when a playback session of theirs runs on it (started_at to ended_at, any
outcome), or they sign in successfully, sign out, search or rate. Failed sign-ins are
attempts, not use (credential stuffing would inflate them); experiment exposures are
logging of an assignment, and counting them would let the exposure logging of one variant
bias its own retention.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import dimensions
from batch import spark as spark_support
from batch.lake import Lake
from batch.sessions import SESSIONS
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("reelpulse.batch.gold")

CONTRACT = Path(__file__).with_name("gold.yml")
ACTIVITY_EVENTS = ("login", "logout", "rating", "search")
UNKNOWN = "UNKNOWN"  # grouping value of a missing device type, CDN edge or country
MS_PER_HOUR = 3_600_000
ACCOUNT_FAILURES = 10  # failed sign-ins of one account in a day: a suspect account
IP_ACCOUNTS = 20  # accounts one IP failed on in a day: a credential-stuffing suspect
AFTER_FAILURE = dt.timedelta(hours=1)  # a success this soon after a failure is flagged
EXPERIMENT_WINDOW_DAYS = 14  # post- and pre-exposure windows, whole weeks
EXACT = "decimal(38,6)"  # sums of doubles, exact so the result is order-independent
# The columns gold reads of dim_titles and silver rating, for a lake without them yet.
TITLES_SCHEMA = "title_id string, name string, kind string, genres array<string>, duration_s int"
RATING_SCHEMA = "user_id string, title_id string, rating float, event_time timestamp, event_id string"

Publish = Callable[[str, "DataFrame"], None]


def load_contract() -> dict[str, Any]:
    """The gold tables' contracts: policies, columns, keys, partitioning, expectations."""
    import yaml

    return dict(yaml.safe_load(CONTRACT.read_text()))


# --- shared pieces -----------------------------------------------------------------------------


def _count_if(condition: Column) -> Column:
    from pyspark.sql import functions as F

    return F.count(F.when(condition, F.lit(1)))


def _ratio(numerator: Column, denominator: Column) -> Column:
    """``numerator / denominator``, null when the denominator is 0 or null."""
    from pyspark.sql import functions as F

    return numerator / F.nullif(denominator, F.lit(0))


def _rebuffer_ratio(rebuffer_ms: Column, watch_ms: Column) -> Column:
    return _ratio(rebuffer_ms, watch_ms + rebuffer_ms)


def _union(frames: Iterable[DataFrame]) -> DataFrame:
    first, *rest = frames
    for frame in rest:
        first = first.unionByName(frame)
    return first


def _empty(like: DataFrame, schema: str) -> DataFrame:
    return like.sparkSession.createDataFrame([], schema)


def activity(sessions: DataFrame, events: Mapping[str, DataFrame]) -> DataFrame:
    """Distinct ``(user_id, activity_date)``: every date a playback session runs on, and
    the dates of successful sign-ins, sign-outs, searches and ratings (``events`` holds
    the silver tables of :data:`ACTIVITY_EVENTS` that exist)."""
    from pyspark.sql import functions as F

    start, end = F.to_date("started_at"), F.to_date("ended_at")
    days = F.explode(F.sequence(start, F.greatest(start, F.coalesce(end, start))))
    frames = [sessions.select("user_id", days.alias("activity_date"))]
    for name, frame in sorted(events.items()):
        rows = frame.where(F.col("success")) if name == "login" else frame
        frames.append(rows.select("user_id", F.col("event_date").alias("activity_date")))
    return _union(frames).where(F.col("user_id").isNotNull()).distinct()


# --- playback ------------------------------------------------------------------------------------


def title_engagement_daily(sessions: DataFrame, titles: DataFrame | None = None) -> DataFrame:
    """Per (start date, title): sessions, successful starts, viewers, watch hours,
    completions and completion rate, with the title's name, kind and genres."""
    from pyspark.sql import functions as F

    c = F.col
    played = ~c("play_failed")
    per_title = sessions.groupBy(c("started_date").alias("event_date"), "title_id").agg(
        F.count(F.lit(1)).alias("sessions"),
        _count_if(c("has_start") & played).alias("starts"),
        F.countDistinct(F.when(played, c("user_id"))).alias("unique_viewers"),
        (F.sum("watch_time_ms") / MS_PER_HOUR).alias("watch_hours"),
        _count_if(c("completed")).alias("completions"),
    )
    catalog = titles if titles is not None else _empty(sessions, TITLES_SCHEMA)
    names = catalog.select("title_id", c("name").alias("title_name"), "kind", "genres")
    return per_title.join(F.broadcast(names), "title_id", "left").select(
        "event_date", "title_id", "title_name", "kind", "genres", "sessions", "starts",
        "unique_viewers", "watch_hours", "completions",
        _ratio(c("completions"), c("sessions")).alias("completion_rate"),
    )  # fmt: skip


def playback_quality_daily(sessions: DataFrame) -> DataFrame:
    """Per (start date, device type, CDN edge, country): play failures, startup time
    (average and exact p50/p95 of successful starts), rebuffering, bitrate, fatal errors."""
    from pyspark.sql import functions as F

    c = F.col
    group = [F.coalesce(c(k), F.lit(UNKNOWN)).alias(k) for k in ("device_type", "cdn_edge", "country")]
    per_group = sessions.groupBy(c("started_date").alias("event_date"), *group).agg(*_quality_measures())
    return per_group.select(
        "event_date", "device_type", "cdn_edge", "country", "sessions", "attempts", "play_failures",
        _ratio(c("play_failures"), c("attempts")).alias("play_failure_rate"),
        "avg_startup_time_ms", "p50_startup_time_ms", "p95_startup_time_ms",
        (c("_watch_ms") / MS_PER_HOUR).alias("watch_hours"),
        (c("_rebuffer_ms") / MS_PER_HOUR).alias("rebuffer_hours"),
        _rebuffer_ratio(c("_rebuffer_ms"), c("_watch_ms")).alias("rebuffer_ratio"),
        "sessions_with_rebuffer",
        _ratio(c("sessions_with_rebuffer"), c("sessions") - c("play_failures")).alias(
            "rebuffer_session_share"
        ),
        _ratio(c("_kbps_ms").cast("double"), c("_kbps_weight_ms")).alias("avg_bitrate_kbps"),
        "fatal_errors",
    )  # fmt: skip


def _quality_measures() -> list[Column]:
    from pyspark.sql import functions as F

    c = F.col
    startup = F.when(c("has_start") & ~c("play_failed"), c("startup_time_ms"))
    weighted = c("avg_bitrate_kbps") * c("watch_time_ms")
    return [
        F.count(F.lit(1)).alias("sessions"),
        _count_if(c("has_start")).alias("attempts"),
        _count_if(c("play_failed")).alias("play_failures"),
        F.avg(startup).alias("avg_startup_time_ms"),
        F.percentile(startup, 0.5).alias("p50_startup_time_ms"),
        F.percentile(startup, 0.95).alias("p95_startup_time_ms"),
        F.sum("watch_time_ms").alias("_watch_ms"),
        F.sum("rebuffer_ms").alias("_rebuffer_ms"),
        _count_if(c("rebuffer_count") > 0).alias("sessions_with_rebuffer"),
        F.sum(weighted.cast(EXACT)).alias("_kbps_ms"),
        F.sum(F.when(c("avg_bitrate_kbps").isNotNull(), c("watch_time_ms"))).alias("_kbps_weight_ms"),
        _count_if(c("fatal_error")).alias("fatal_errors"),
    ]


def cdn_edge_daily(requests: DataFrame) -> DataFrame:
    """Per (date, edge, PoP) from the sampled edge logs: requests, cache hit ratio, exact
    p50/p95 latency, server error rate (HTTP status >= 500) and bytes served."""
    from pyspark.sql import functions as F

    c = F.col
    per_edge = requests.groupBy("event_date", "edge_id", "pop").agg(
        F.count(F.lit(1)).alias("requests"),
        _count_if(c("cache_status") == "HIT").alias("cache_hits"),
        F.percentile("latency_ms", 0.5).alias("p50_latency_ms"),
        F.percentile("latency_ms", 0.95).alias("p95_latency_ms"),
        _count_if(c("http_status") >= 500).alias("server_errors"),
        F.sum("bytes_sent").alias("bytes_sent"),
    )
    return per_edge.select(
        "event_date", "edge_id", "pop", "requests", "cache_hits",
        _ratio(c("cache_hits"), c("requests")).alias("cache_hit_ratio"),
        "p50_latency_ms", "p95_latency_ms", "server_errors",
        _ratio(c("server_errors"), c("requests")).alias("error_rate"),
        "bytes_sent",
    )  # fmt: skip


# --- audience ------------------------------------------------------------------------------------


def active_users_daily(active: DataFrame) -> DataFrame:
    """Per date from the first to the last date of ``active`` (see :func:`activity`):
    users active that day, in the 7 days and in the 30 days ending that day."""
    from pyspark.sql import functions as F

    c = F.col
    spread = active.select(
        "user_id", "activity_date", F.explode(F.sequence(F.lit(0), F.lit(29))).alias("lag")
    )
    windows = spread.groupBy(F.date_add("activity_date", c("lag")).alias("event_date")).agg(
        F.countDistinct(F.when(c("lag") == 0, c("user_id"))).alias("dau"),
        F.countDistinct(F.when(c("lag") < 7, c("user_id"))).alias("wau"),
        F.countDistinct("user_id").alias("mau"),
    )
    bounds = active.agg(F.min("activity_date").alias("_first"), F.max("activity_date").alias("_last"))
    calendar = bounds.select("_first", F.explode(F.sequence("_first", "_last")).alias("event_date"))
    days = calendar.join(windows, "event_date", "left").fillna(0, ["dau", "wau", "mau"])
    return days.select(
        "event_date", "dau", "wau", "mau",
        _ratio(c("dau"), c("mau")).alias("dau_mau_ratio"),
        (F.date_sub("event_date", 6) >= c("_first")).alias("wau_complete"),
        (F.date_sub("event_date", 29) >= c("_first")).alias("mau_complete"),
    )  # fmt: skip


def _week(date: Column) -> Column:
    """The Monday of the ISO week of ``date``."""
    from pyspark.sql import functions as F

    return F.date_trunc("week", date).cast("date")


def retention_cohorts(active: DataFrame) -> DataFrame:
    """Weekly cohorts by the week of each user's first activity: per cohort and week
    number (0 = the cohort's own week, up to the week of the newest activity), how many
    of the cohort were active that week and which share that is."""
    from pyspark.sql import functions as F

    c = F.col
    first = active.groupBy("user_id").agg(_week(F.min("activity_date")).alias("cohort_week"))
    sizes = first.groupBy("cohort_week").agg(F.count(F.lit(1)).alias("cohort_size"))
    weeks = active.select("user_id", _week(c("activity_date")).alias("_week")).distinct()
    number = (F.datediff("_week", "cohort_week") / 7).cast("int").alias("week_number")
    counts = (
        weeks.join(first, "user_id").groupBy("cohort_week", number).agg(F.count(F.lit(1)).alias("active"))
    )
    last = active.agg(F.max("activity_date").alias("_last"))
    span = (F.datediff(_week(c("_last")), "cohort_week") / 7).cast("int")
    grid = sizes.crossJoin(last).select("*", F.explode(F.sequence(F.lit(0), span)).alias("week_number"))
    rows = grid.join(counts, ["cohort_week", "week_number"], "left")
    week_start = F.date_add("cohort_week", c("week_number") * 7)
    return rows.select(
        "cohort_week", "week_number", week_start.alias("week_start"), "cohort_size",
        F.coalesce(c("active"), F.lit(0)).alias("active_users"),
        (F.coalesce(c("active"), F.lit(0)) / c("cohort_size")).alias("retention"),
        (F.date_add(week_start, 6) <= c("_last")).alias("week_complete"),
    )  # fmt: skip


# --- sign-in security ----------------------------------------------------------------------------


def login_security_daily(
    logins: DataFrame,
    account_failures: int = ACCOUNT_FAILURES,
    ip_accounts: int = IP_ACCOUNTS,
    after_failure: dt.timedelta = AFTER_FAILURE,
) -> DataFrame:
    """Per (date, country): sign-in attempts and failures, accounts and (pseudonymized)
    IPs, suspect accounts (>= ``account_failures`` failures), suspect IPs (failures on >=
    ``ip_accounts`` accounts) and successes within ``after_failure`` of a failure of the
    same account."""
    from pyspark.sql import functions as F

    c = F.col
    rows = _recent_failures(logins, after_failure).withColumn(
        "country", F.coalesce(c("country"), F.lit(UNKNOWN))
    )
    failed = rows.where(~c("success"))
    accounts = _suspects(failed, "user_id", F.count(F.lit(1)), account_failures, "suspect_accounts")
    ips = _suspects(failed, "client_ip", F.countDistinct("user_id"), ip_accounts, "suspect_ips")
    per_day = rows.groupBy("event_date", "country").agg(*_login_measures())
    joined = per_day.join(accounts, ["event_date", "country"], "left").join(
        ips, ["event_date", "country"], "left"
    )
    return joined.select(
        "event_date", "country", "attempts", "failures",
        _ratio(c("failures"), c("attempts")).alias("failure_rate"),
        "accounts", "failed_accounts", "ips", "unknown_account_failures", "mfa_failures",
        F.coalesce(c("suspect_accounts"), F.lit(0)).alias("suspect_accounts"),
        F.coalesce(c("suspect_ips"), F.lit(0)).alias("suspect_ips"),
        "successes_after_failure",
    )  # fmt: skip


def _recent_failures(logins: DataFrame, after_failure: dt.timedelta) -> DataFrame:
    """Each attempt with the count of the same account's failures in the preceding
    ``after_failure`` strictly before it."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    span = int(after_failure.total_seconds() * 1000)
    window = Window.partitionBy("user_id").orderBy(F.unix_millis("event_time")).rangeBetween(-span, -1)
    return logins.withColumn("_recent_failures", _count_if(~F.col("success")).over(window))


def _suspects(failed: DataFrame, entity: str, measure: Column, threshold: int, name: str) -> DataFrame:
    """Per (date, country): how many ``entity`` values reach ``threshold`` on ``measure``."""
    from pyspark.sql import functions as F

    per_entity = failed.where(F.col(entity).isNotNull()).groupBy("event_date", "country", entity)
    reached = per_entity.agg(measure.alias("_n")).where(F.col("_n") >= threshold)
    return reached.groupBy("event_date", "country").agg(F.count(F.lit(1)).alias(name))


def _login_measures() -> list[Column]:
    from pyspark.sql import functions as F

    c = F.col
    failed = ~c("success")
    return [
        F.count(F.lit(1)).alias("attempts"),
        _count_if(failed).alias("failures"),
        F.countDistinct("user_id").alias("accounts"),
        F.countDistinct(F.when(failed, c("user_id"))).alias("failed_accounts"),
        F.countDistinct("client_ip").alias("ips"),
        _count_if(c("failure_reason") == "UNKNOWN_ACCOUNT").alias("unknown_account_failures"),
        _count_if(c("failure_reason") == "MFA_FAILED").alias("mfa_failures"),
        _count_if(c("success") & (c("_recent_failures") > 0)).alias("successes_after_failure"),
    ]


# --- recommendations -----------------------------------------------------------------------------


def user_title_interactions(
    sessions: DataFrame, ratings: DataFrame | None = None, titles: DataFrame | None = None
) -> DataFrame:
    """Per (user, title): implicit feedback from playback sessions and the latest explicit
    rating; a pair with only sessions or only a rating appears too."""
    from pyspark.sql import functions as F

    c = F.col
    watched = _watched(sessions, titles)
    rated = _latest_ratings(ratings if ratings is not None else _empty(sessions, RATING_SCHEMA))
    both = watched.join(rated, ["user_id", "title_id"], "full")
    return both.select(
        "user_id", "title_id",
        F.coalesce(c("sessions"), F.lit(0)).alias("sessions"),
        F.coalesce(c("watch_time_ms"), F.lit(0)).alias("watch_time_ms"),
        F.coalesce(c("completions"), F.lit(0)).alias("completions"),
        "max_completion_share", "last_watched_at", "rating", "rated_at",
    )  # fmt: skip


def _watched(sessions: DataFrame, titles: DataFrame | None) -> DataFrame:
    from pyspark.sql import functions as F

    c = F.col
    catalog = titles if titles is not None else _empty(sessions, TITLES_SCHEMA)
    durations = catalog.select("title_id", (c("duration_s").cast("long") * 1000).alias("_duration_ms"))
    reached = _ratio(c("max_position_ms"), c("_duration_ms"))
    share = F.when(reached.isNotNull(), F.least(reached, F.lit(1.0)))  # least() skips nulls
    joined = sessions.where(c("user_id").isNotNull()).join(F.broadcast(durations), "title_id", "left")
    return joined.groupBy("user_id", "title_id").agg(
        F.count(F.lit(1)).alias("sessions"),
        F.sum("watch_time_ms").alias("watch_time_ms"),
        _count_if(c("completed")).alias("completions"),
        F.max(share).alias("max_completion_share"),
        F.max("ended_at").alias("last_watched_at"),
    )


def _latest_ratings(ratings: DataFrame) -> DataFrame:
    """The newest rating of each (user, title); ties on time broken by event_id."""
    from pyspark.sql import functions as F

    latest = F.max(F.struct("event_time", "event_id", "rating")).alias("_latest")
    per_pair = ratings.where(F.col("user_id").isNotNull()).groupBy("user_id", "title_id").agg(latest)
    return per_pair.select(
        "user_id",
        "title_id",
        F.col("_latest.rating").alias("rating"),
        F.col("_latest.event_time").alias("rated_at"),
    )


# --- experiments ---------------------------------------------------------------------------------


def experiment_user_metrics(
    exposures: DataFrame,
    sessions: DataFrame,
    active: DataFrame,
    as_of: dt.datetime,
    window_days: int = EXPERIMENT_WINDOW_DAYS,
) -> DataFrame:
    """Per (experiment, variant, user): first exposure, exposures, and metrics in the
    ``window_days`` after the first exposure and in as many days before it (CUPED
    covariates); day-1/day-7 retention and whether those days (and the window) are fully
    observed by ``as_of``, the newest event time of the data."""
    from pyspark.sql import functions as F

    exposed = _first_exposures(exposures)
    keys = ["experiment_id", "variant", "user_id"]
    playback = _window_sessions(exposed, sessions, window_days)
    days = _window_days(exposed, active, window_days)
    joined = exposed.join(playback, keys, "left").join(days, keys, "left")
    return joined.select(*keys, *_experiment_outputs(F.lit(as_of), window_days))


def _first_exposures(exposures: DataFrame) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    per_variant = exposures.where(F.col("user_id").isNotNull()).groupBy("experiment_id", "variant", "user_id")
    exposed = per_variant.agg(
        F.min("event_time").alias("first_exposed_at"), F.count(F.lit(1)).alias("exposure_count")
    )
    user = Window.partitionBy("experiment_id", "user_id")
    several = F.min("variant").over(user) != F.max("variant").over(user)
    return exposed.withColumn("multiple_variants", several).withColumn(
        "exposure_date", F.to_date("first_exposed_at")
    )


def _window_sessions(exposed: DataFrame, sessions: DataFrame, window_days: int) -> DataFrame:
    """Session measures per exposed user: started in the window after the first exposure
    (``post``) or in the equally long window before it (``pre``)."""
    from pyspark.sql import functions as F

    c = F.col
    span = F.expr(f"INTERVAL {window_days} DAYS")
    s = sessions.select("user_id", "started_at", "watch_time_ms", "play_failed", "rebuffer_ms")
    within = (c("started_at") >= c("first_exposed_at") - span) & (
        c("started_at") < c("first_exposed_at") + span
    )
    joined = exposed.join(s, "user_id").where(within)
    post = c("started_at") >= c("first_exposed_at")
    measures = [m for prefix, side in (("", post), ("pre_", ~post)) for m in _session_measures(prefix, side)]
    return joined.groupBy("experiment_id", "variant", "user_id").agg(*measures)


def _session_measures(prefix: str, side: Column) -> list[Column]:
    from pyspark.sql import functions as F

    c = F.col
    return [
        _count_if(side).alias(f"{prefix}sessions"),
        F.sum(F.when(side, c("watch_time_ms"))).alias(f"{prefix}watch_time_ms"),
        _count_if(side & c("play_failed")).alias(f"{prefix}play_failures"),
        F.sum(F.when(side, c("rebuffer_ms"))).alias(f"{prefix}rebuffer_ms"),
    ]


def _window_days(exposed: DataFrame, active: DataFrame, window_days: int) -> DataFrame:
    """Active days per exposed user: days 1..window after the exposure date, days
    -window..-1 before it (the exposure day itself is in neither), and days 1 and 1..7."""
    from pyspark.sql import functions as F

    c = F.col
    day = F.datediff("activity_date", "exposure_date")
    joined = exposed.join(active, "user_id").withColumn("_day", day)
    joined = joined.where(c("_day").between(-window_days, window_days))
    return joined.groupBy("experiment_id", "variant", "user_id").agg(
        _distinct_days(c("_day").between(1, window_days)).alias("active_days"),
        _distinct_days(c("_day").between(-window_days, -1)).alias("pre_active_days"),
        F.max(c("_day") == 1).alias("_active_d1"),
        F.max(c("_day").between(1, 7)).alias("_active_d7"),
    )


def _distinct_days(condition: Column) -> Column:
    from pyspark.sql import functions as F

    return F.countDistinct(F.when(condition, F.col("activity_date")))


def _observed_through(as_of: Column, day: int) -> Column:
    """Whether day ``day`` after the exposure date has fully passed at ``as_of``."""
    from pyspark.sql import functions as F

    return as_of >= F.date_add("exposure_date", day + 1).cast("timestamp")


def _retained(active: Column, observable: Column) -> Column:
    """True when active, false when not active and the days are observed, else null."""
    from pyspark.sql import functions as F

    return F.when(F.coalesce(active, F.lit(False)), F.lit(True)).when(observable, F.lit(False))


def _window_outputs(prefix: str) -> list[Column]:
    """The measures of one window (``""`` after the exposure, ``"pre_"`` before), 0 when
    the user has no session or activity in it."""
    from pyspark.sql import functions as F

    def zero(name: str) -> Column:
        return F.coalesce(F.col(f"{prefix}{name}"), F.lit(0))

    return [
        *(
            zero(n).alias(f"{prefix}{n}")
            for n in ("sessions", "watch_time_ms", "play_failures", "rebuffer_ms")
        ),
        _rebuffer_ratio(zero("rebuffer_ms"), zero("watch_time_ms")).alias(f"{prefix}rebuffer_ratio"),
        zero("active_days").alias(f"{prefix}active_days"),
    ]


def _experiment_outputs(as_of: Column, window_days: int) -> list[Column | str]:
    from pyspark.sql import functions as F

    d1, d7 = _observed_through(as_of, 1), _observed_through(as_of, 7)
    return [
        "first_exposed_at", "exposure_date", "exposure_count", "multiple_variants",
        *_window_outputs(""),
        _retained(F.col("_active_d1"), d1).alias("retained_d1"),
        _retained(F.col("_active_d7"), d7).alias("retained_d7"),
        *_window_outputs("pre_"),
        d1.alias("d1_observable"), d7.alias("d7_observable"),
        _observed_through(as_of, window_days).alias("window_complete"),
    ]  # fmt: skip


def newest_event_time(frames: Mapping[str, DataFrame]) -> dt.datetime | None:
    """The newest event time of the given silver tables (sessions: their last event),
    None when they hold no rows."""
    from pyspark.sql import functions as F

    times = [
        frame.select(F.col("last_event_at" if name == SESSIONS else "event_time").alias("t"))
        for name, frame in sorted(frames.items())
    ]
    millis = _union(times).agg(F.unix_millis(F.max("t"))).collect()[0][0]
    return None if millis is None else dt.datetime.fromtimestamp(millis / 1000, dt.UTC)


# --- the registry --------------------------------------------------------------------------------

Inputs = Mapping[str, "DataFrame"]


@dataclass(frozen=True)
class GoldTable:
    """A gold table: how it is built, from which silver tables (``inputs`` must exist,
    ``optional`` are used when they do), how it is partitioned and which column, if
    any, holds a pseudonymized user id."""

    name: str
    build: Callable[[Inputs], DataFrame]
    inputs: tuple[str, ...]
    optional: tuple[str, ...] = ()
    partitioning: tuple[str, ...] = ()
    user_column: str | None = None


def _activity_of(frames: Inputs) -> DataFrame:
    return activity(frames[SESSIONS], {n: f for n, f in frames.items() if n in ACTIVITY_EVENTS})


def _title_engagement(frames: Inputs) -> DataFrame:
    return title_engagement_daily(frames[SESSIONS], frames.get(dimensions.TITLES))


def _interactions(frames: Inputs) -> DataFrame:
    return user_title_interactions(frames[SESSIONS], frames.get("rating"), frames.get(dimensions.TITLES))


def _experiments(frames: Inputs) -> DataFrame:
    as_of = newest_event_time(frames) or dt.datetime.fromtimestamp(0, dt.UTC)  # no rows: nothing observed
    return experiment_user_metrics(
        frames["experiment_exposure"], frames[SESSIONS], _activity_of(frames), as_of
    )


TABLES: dict[str, GoldTable] = {
    t.name: t
    for t in (
        GoldTable(
            "title_engagement_daily",
            _title_engagement,
            inputs=(SESSIONS,),
            optional=(dimensions.TITLES,),
            partitioning=("event_date",),
        ),
        GoldTable(
            "playback_quality_daily",
            lambda f: playback_quality_daily(f[SESSIONS]),
            inputs=(SESSIONS,),
            partitioning=("event_date",),
        ),
        GoldTable(
            "cdn_edge_daily",
            lambda f: cdn_edge_daily(f["cdn_request"]),
            inputs=("cdn_request",),
            partitioning=("event_date",),
        ),
        GoldTable(
            "active_users_daily",
            lambda f: active_users_daily(_activity_of(f)),
            inputs=(SESSIONS,),
            optional=ACTIVITY_EVENTS,
        ),
        GoldTable(
            "retention_cohorts",
            lambda f: retention_cohorts(_activity_of(f)),
            inputs=(SESSIONS,),
            optional=ACTIVITY_EVENTS,
        ),
        GoldTable(
            "login_security_daily",
            lambda f: login_security_daily(f["login"]),
            inputs=("login",),
            partitioning=("event_date",),
        ),
        GoldTable(
            "user_title_interactions",
            _interactions,
            inputs=(SESSIONS,),
            optional=("rating", dimensions.TITLES),
            user_column="user_id",
        ),
        GoldTable(
            "experiment_user_metrics",
            _experiments,
            inputs=("experiment_exposure", SESSIONS),
            optional=ACTIVITY_EVENTS,
            user_column="user_id",
        ),
    )
}


def user_tables() -> dict[str, str]:
    """Gold tables that hold a pseudonymized user id, and the column that holds it."""
    return {t.name: t.user_column for t in TABLES.values() if t.user_column}


# --- the job -------------------------------------------------------------------------------------


def overwrite(lake: Lake) -> Publish:
    """The default publish: replace the Delta table at ``lake.gold(name)``, schema included."""

    def publish(name: str, frame: DataFrame) -> None:
        writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        partitioning = TABLES[name].partitioning
        (writer.partitionBy(*partitioning) if partitioning else writer).save(lake.gold(name))

    return publish


def selected(tables: Iterable[str] | None) -> list[GoldTable]:
    """The registry entries of ``tables`` (all when None), in registry order."""
    wanted = set(TABLES) if tables is None else set(tables)
    unknown = sorted(wanted - set(TABLES))
    if unknown:
        raise ValueError(f"unknown gold table(s) {', '.join(unknown)}: choose from {', '.join(TABLES)}")
    return [t for t in TABLES.values() if t.name in wanted]


def silver_reader(spark: SparkSession, lake: Lake) -> Callable[[str], DataFrame | None]:
    """Reads a silver table once per run (None when it does not exist yet)."""
    from delta.tables import DeltaTable

    found: dict[str, DataFrame | None] = {}

    def read(name: str) -> DataFrame | None:
        if name not in found:
            path = lake.silver(name)
            exists = DeltaTable.isDeltaTable(spark, path)
            found[name] = spark.read.format("delta").load(path) if exists else None
        return found[name]

    return read


def _inputs(table: GoldTable, read: Callable[[str], DataFrame | None]) -> dict[str, DataFrame] | None:
    """The table's silver inputs that exist, or None when a required one does not."""
    found = {name: frame for name in (*table.inputs, *table.optional) if (frame := read(name)) is not None}
    missing = [name for name in table.inputs if name not in found]
    if missing:
        log.info("gold: %s skipped, silver/%s does not exist yet", table.name, ", silver/".join(missing))
        return None
    return found


def build_and_publish(table: GoldTable, frames: Inputs, publish: Publish) -> int:
    """Build one table, hand it to ``publish`` and return its row count."""
    frame = table.build(frames).persist()
    try:
        rows = frame.count()
        publish(table.name, frame)
    finally:
        frame.unpersist()
    return rows


def run(
    settings: Settings,
    spark: SparkSession | None = None,
    *,
    tables: Iterable[str] | None = None,
    publish: Publish | None = None,
) -> dict[str, int]:
    """Rebuild the requested gold tables (default all) from silver, a full recompute,
    and return their row counts. Tables whose required silver inputs do not exist yet are
    skipped. ``publish(name, frame)`` receives each table (default: :func:`overwrite`)."""
    wanted = selected(tables)
    spark = spark or spark_support.session(settings, "reelpulse-gold")
    lake = Lake(settings.lake_dir)
    publish = publish or overwrite(lake)
    read = silver_reader(spark, lake)
    counts: dict[str, int] = {}
    for table in wanted:
        frames = _inputs(table, read)
        if frames is None:
            continue
        started = time.monotonic()
        counts[table.name] = build_and_publish(table, frames, publish)
        log.info("gold: %s %d rows in %.1fs", table.name, counts[table.name], time.monotonic() - started)
    return counts
