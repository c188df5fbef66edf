"""Gold on hand-built silver rows: every table's values checked against numbers worked out
by hand, the tables against their contracts in gold.yml, and a rerun that changes nothing.

One local Spark session (local[1], 2 shuffle partitions, UI off) and a temp lake per module;
silver tables are written directly in the shapes of silver.yml, so no bronze is needed.
The calendar: Monday 2025-01-06 to Thursday 2025-01-16; the newest event (a search) is at
2025-01-16 18:00 UTC.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from batch import gold, silver
from batch.lake import Lake
from reelpulse.contract import Contract
from reelpulse.derive import spark_schema
from reelpulse.settings import Settings

HOUR = 3_600_000


def jan(day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(2025, 1, day, hour, minute, tzinfo=dt.UTC)


def day(d: int) -> dt.date:
    return dt.date(2025, 1, d)


def utc(collected: dt.datetime | None) -> dt.datetime | None:
    """A timestamp Spark returned (naive, in the driver's local zone) as aware UTC."""
    return None if collected is None else collected.astimezone(dt.UTC)


# --- silver rows in silver's shapes ----------------------------------------------------------


class Silver:
    """Writes rows to a lake's silver tables in the columns and types of silver.yml."""

    def __init__(self, spark: Any, settings: Settings) -> None:
        self.spark, self.lake = spark, Lake(settings.lake_dir)
        self.documented = silver.load_contract()
        self.contract = Contract(settings.schemas_dir)
        self.offset = 0

    def columns(self, name: str) -> list[tuple[str, str]]:
        if name in self.documented["tables"]:
            return [(c["name"], c["type"]) for c in self.documented["tables"][name]["columns"]]
        event_columns = [(c["name"], c["type"]) for c in self.documented["event_tables"]["columns"]]
        envelope = event_columns[: len(silver.ENVELOPE_COLUMNS)]
        meta = event_columns[len(silver.ENVELOPE_COLUMNS) + 1 :]
        fields = spark_schema(self.contract[name]).fields
        own = [(f.name, f.dataType.simpleString()) for f in fields if f.name != "envelope"]
        return (envelope if "envelope" in {f.name for f in fields} else []) + own + meta

    def event(self, name: str, event_time: dt.datetime, **values: Any) -> dict[str, Any]:
        self.offset += 1
        return {
            "event_id": f"{name}-{self.offset:04d}", "event_time": event_time,
            "session_id": f"app-{self.offset}", "device_type": "TV", "country": "DE",
            "_kafka_topic": name, "_kafka_partition": 0, "_kafka_offset": self.offset,
            "_kafka_timestamp": event_time, "_ingested_at": event_time,
            "event_date": event_time.date(), **values,
        }  # fmt: skip

    def write(self, name: str, rows: list[dict[str, Any]], partition: str | None = "event_date") -> None:
        columns = self.columns(name)
        schema = ", ".join(f"`{c}` {t}" for c, t in columns)
        frame = self.spark.createDataFrame([tuple(r.get(c) for c, _ in columns) for r in rows], schema)
        writer = frame.write.format("delta").mode("overwrite")
        (writer.partitionBy(partition) if partition else writer).save(self.lake.silver(name))


def session(sid: str, user: str, title: str, start: dt.datetime, minutes: float, **values: Any) -> dict:
    """A closed session that ends ``minutes`` after it starts; defaults: a successful start
    on a TV in DE from edge e1, nothing watched."""
    end = start + dt.timedelta(minutes=minutes)
    return {
        "session_id": sid, "user_id": user, "profile_id": f"{user}-p", "title_id": title,
        "device_type": "TV", "country": "DE", "cdn_edge": "e1", "started_at": start, "ended_at": end,
        "last_event_at": end, "has_start": True, "startup_time_ms": 1000, "play_failed": False,
        "watch_time_ms": 0, "rebuffer_count": 0, "rebuffer_ms": 0, "avg_bitrate_kbps": None,
        "max_position_ms": None, "completed": False, "fatal_error": False, "exit_reason": "USER_EXIT",
        "state": "CLOSED", "event_count": 3, "started_date": start.date(), **values,
    }  # fmt: skip


def watched(ms: int, kbps: float, **values: Any) -> dict[str, Any]:
    return {"watch_time_ms": ms, "avg_bitrate_kbps": float(kbps), "max_position_ms": ms, **values}


FAILED = {"play_failed": True, "startup_time_ms": 5000, "fatal_error": True, "exit_reason": "ERROR"}
NO_START = {"has_start": False, "startup_time_ms": None}

SESSIONS = [
    # 2025-01-06, TV / e1 / DE: five successful starts, one failure, one without a start
    session("a1", "u1", "t1", jan(6, 10), 30, startup_time_ms=1000, **watched(1_800_000, 3000)),
    session("a2", "u2", "t1", jan(6, 11), 65, startup_time_ms=2000, completed=True, rebuffer_count=2,
            rebuffer_ms=200_000, **watched(3_600_000, 6000)),
    session("a3", "u3", "t1", jan(6, 12), 15, startup_time_ms=3000, rebuffer_count=1, rebuffer_ms=100_000,
            **watched(600_000, 3000)),
    session("a4", "u4", "t1", jan(6, 13), 1, startup_time_ms=4000),
    session("a5", "u1", "t2", jan(6, 14), 20, startup_time_ms=10_000, **watched(1_200_000, 1500)),
    session("a6", "u2", "t1", jan(6, 15), 0, **FAILED),
    session("a7", "u5", "t1", jan(6, 16), 20, **NO_START, **watched(1_200_000, 3000)),
    # past midnight, on a phone in FR: u6 is active on the 6th and the 7th
    session("a8", "u6", "t2", jan(6, 23, 45), 30, device_type="MOBILE", country="FR", cdn_edge="e2",
            startup_time_ms=500, completed=True, **watched(1_800_000, 2000)),
    # a title the catalog does not know, no start and no edge
    session("a9", "u1", "t3", jan(7, 9), 10, cdn_edge=None, **NO_START, **watched(600_000, 3000)),
    # u1 around the first exposure to exp1 (2025-01-08 10:00)
    session("b1", "u1", "t2", jan(8, 9), 5, **watched(300_000, 3000)),
    session("b2", "u1", "t2", jan(8, 11), 12, rebuffer_count=1, rebuffer_ms=100_000,
            **watched(600_000, 3000, max_position_ms=900_000)),
    session("b3", "u1", "t2", jan(9, 20), 35, completed=True,
            **watched(1_200_000, 3000, max_position_ms=1_900_000)),
    session("b4", "u1", "t1", jan(15, 18), 0, **FAILED),
]  # fmt: skip

TITLES = [
    {"title_id": "t1", "name": "Night Train", "kind": "MOVIE", "genres": ["thriller"], "duration_s": 3600},
    {"title_id": "t2", "name": "Harbor", "kind": "EPISODE", "genres": ["drama"], "duration_s": 1800},
]


def cdn_rows(s: Silver) -> list[dict]:
    lines = [(10, "HIT", 200, 1000), (20, "HIT", 200, 2000), (30, "HIT", 206, 3000),
             (40, "MISS", 503, 4000), (100, "STALE", 404, 0)]  # fmt: skip
    rows = [
        s.event("cdn_request", jan(6, 12, i), edge_id="e1", pop="FRA", cache_status=cache, http_status=status,
                latency_ms=latency, bytes_sent=sent, client_region="DE", client_ip="ip")
        for i, (latency, cache, status, sent) in enumerate(lines)
    ]  # fmt: skip
    rows.append(
        s.event("cdn_request", jan(7, 12), edge_id="e2", pop="AMS", cache_status="HIT", http_status=200,
                latency_ms=15, bytes_sent=500, client_region="NL", client_ip="ip")
    )  # fmt: skip
    return rows


def login(s: Silver, t: dt.datetime, user: str, ip: str, reason: str | None, country: str = "BR") -> dict:
    return s.event(
        "login", t, user_id=user, client_ip=ip, country=country, success=reason is None,
        failure_reason=reason, auth_method="PASSWORD",
    )  # fmt: skip


def login_rows(s: Silver) -> list[dict]:
    """2025-01-08 in BR: one IP fails on 20 unknown accounts; one account fails 10 times and
    then gets in 21 minutes later; an MFA failure followed by a success 2 hours later; a
    plain success. 2025-01-13 in DE: u4 signs in."""
    rows = [login(s, jan(8, 2, i), f"acct-{i:02d}", "ip-bad", "UNKNOWN_ACCOUNT") for i in range(20)]
    rows += [login(s, jan(8, 10, i), "victim", "ip-x", "BAD_PASSWORD") for i in range(10)]
    rows += [login(s, jan(8, 10, 30), "victim", "ip-x", None)]
    rows += [
        login(s, jan(8, 11), "mfa-user", "ip-m", "MFA_FAILED"),
        login(s, jan(8, 13), "mfa-user", "ip-m", None),
    ]
    rows += [login(s, jan(8, 9), "u5", "ip-5", None), login(s, jan(13, 9), "u4", "ip-4", None, country="DE")]
    return rows


def exposure(s: Silver, t: dt.datetime, user: str, variant: str) -> dict:
    return s.event(
        "experiment_exposure",
        t,
        user_id=user,
        experiment_id="exp1",
        variant=variant,
        allocation_unit="ACCOUNT",
    )


@pytest.fixture(scope="module")
def silver_lake(spark: Any, lake_settings: Settings) -> Silver:
    """Silver as a run of silver.py would leave it, without logout (an optional input)."""
    s = Silver(spark, lake_settings)
    s.write("playback_sessions", SESSIONS, partition="started_date")
    s.write("dim_titles", TITLES, partition=None)
    s.write("cdn_request", cdn_rows(s))
    s.write("login", login_rows(s))
    s.write("rating", [
        s.event("rating", jan(6, 21), user_id="u1", title_id="t1", rating=3.0, source="APP"),
        s.event("rating", jan(7, 8), user_id="u1", title_id="t1", rating=4.5, source="APP"),
        s.event("rating", jan(9, 8), user_id="u7", title_id="t2", rating=5.0, source="APP"),
    ])  # fmt: skip
    s.write("search", [
        s.event("search", t, user_id=u, query="q", results_count=3)
        for t, u in ((jan(12, 10), "u2"), (jan(14, 10), "u8"), (jan(16, 18), "u6"))
    ])  # fmt: skip
    s.write("experiment_exposure", [
        exposure(s, jan(8, 10), "u1", "control"), exposure(s, jan(9, 9), "u1", "control"),
        exposure(s, jan(8, 12), "u2", "treatment"), exposure(s, jan(10, 12), "u2", "control"),
        exposure(s, jan(16, 8), "u3", "treatment"),
    ])  # fmt: skip
    return s


@pytest.fixture(scope="module")
def built(spark: Any, lake_settings: Settings, silver_lake: Silver) -> dict[str, int]:
    return gold.run(lake_settings, spark)


def rows(spark: Any, settings: Settings, name: str, *key: str) -> dict[Any, Any]:
    """A gold table's rows by key (one column: the value; several: a tuple)."""
    found = spark.read.format("delta").load(Lake(settings.lake_dir).gold(name)).collect()
    return {(r[key[0]] if len(key) == 1 else tuple(r[k] for k in key)): r for r in found}


def snapshot(spark: Any, settings: Settings) -> dict[str, list]:
    root = Path(settings.lake_dir) / "gold"
    tables = sorted(p.parent.name for p in root.glob("*/_delta_log"))
    read = spark.read.format("delta")
    return {t: sorted(map(tuple, read.load(str(root / t)).collect()), key=repr) for t in tables}


# --- the tables ----------------------------------------------------------------------------------


def test_every_table_is_built(built: dict[str, int]) -> None:
    assert built == {
        "title_engagement_daily": 6, "playback_quality_daily": 6, "cdn_edge_daily": 2,
        "active_users_daily": 11, "retention_cohorts": 3, "login_security_daily": 2,
        "user_title_interactions": 9, "experiment_user_metrics": 4,
    }  # fmt: skip


def test_title_engagement(spark: Any, lake_settings: Settings, built: dict) -> None:
    got = rows(spark, lake_settings, "title_engagement_daily", "event_date", "title_id")
    t1 = got[day(6), "t1"]  # a1-a4, a6 (failed), a7 (no start)
    assert (t1.title_name, t1.kind, t1.genres) == ("Night Train", "MOVIE", ["thriller"])
    assert (t1.sessions, t1.starts, t1.unique_viewers, t1.completions) == (6, 4, 5, 1)
    assert t1.watch_hours == pytest.approx(7_200_000 / HOUR)
    assert t1.completion_rate == pytest.approx(1 / 6)
    t2 = got[day(6), "t2"]
    assert (t2.sessions, t2.starts, t2.unique_viewers, t2.completion_rate) == (2, 2, 2, 0.5)
    assert t2.watch_hours == pytest.approx(3_000_000 / HOUR)
    t3 = got[day(7), "t3"]  # not in the catalog
    assert (t3.title_name, t3.kind, t3.sessions, t3.starts, t3.completion_rate) == (None, None, 1, 0, 0.0)


def test_playback_quality(spark: Any, lake_settings: Settings, built: dict) -> None:
    key = ("event_date", "device_type", "cdn_edge", "country")
    got = rows(spark, lake_settings, "playback_quality_daily", *key)
    tv = got[day(6), "TV", "e1", "DE"]
    assert (tv.sessions, tv.attempts, tv.play_failures, tv.fatal_errors) == (7, 6, 1, 1)
    assert tv.play_failure_rate == pytest.approx(1 / 6)
    # successful starts 1000, 2000, 3000, 4000, 10000 ms: p95 at rank 0.95 * 4 = 3.8
    assert (tv.avg_startup_time_ms, tv.p50_startup_time_ms) == (4000, 3000)
    assert tv.p95_startup_time_ms == pytest.approx(4000 + 0.8 * 6000)
    assert tv.watch_hours == pytest.approx(8_400_000 / HOUR)
    assert tv.rebuffer_ratio == pytest.approx(300_000 / 8_700_000)
    assert (tv.sessions_with_rebuffer, tv.rebuffer_session_share) == (2, pytest.approx(2 / 6))
    kbps_ms = 3000 * 1.8 + 6000 * 3.6 + 3000 * 0.6 + 1500 * 1.2 + 3000 * 1.2
    assert tv.avg_bitrate_kbps == pytest.approx(kbps_ms / 8.4)
    phone = got[day(6), "MOBILE", "e2", "FR"]
    assert (phone.sessions, phone.p95_startup_time_ms, phone.avg_bitrate_kbps) == (1, 500, 2000)
    unknown = got[day(7), "TV", gold.UNKNOWN, "DE"]
    assert (unknown.attempts, unknown.play_failure_rate, unknown.p50_startup_time_ms) == (0, None, None)


def test_cdn_edges(spark: Any, lake_settings: Settings, built: dict) -> None:
    got = rows(spark, lake_settings, "cdn_edge_daily", "event_date", "edge_id", "pop")
    e1 = got[day(6), "e1", "FRA"]
    assert (e1.requests, e1.cache_hits, e1.cache_hit_ratio) == (5, 3, 0.6)  # STALE is no hit
    assert (e1.p50_latency_ms, e1.p95_latency_ms) == (30, pytest.approx(40 + 0.8 * 60))
    assert (e1.server_errors, e1.error_rate, e1.bytes_sent) == (1, 0.2, 10_000)  # 404 is no server error
    e2 = got[day(7), "e2", "AMS"]
    assert (e2.requests, e2.p50_latency_ms, e2.p95_latency_ms, e2.error_rate) == (1, 15, 15, 0.0)


def test_active_users(spark: Any, lake_settings: Settings, built: dict) -> None:
    """Active: 6th u1-u6 (sessions, a rating), 7th u1 u6 (a session past midnight), 8th u1
    and three successful sign-ins (not the 20 failed accounts), 9th u1 u7 (a rating), 12th
    u2 (a search; not u2's exposure on the 10th), 13th u4 (sign-in), 14th u8, 15th u1 (a
    failed play), 16th u6 (not u3's exposure)."""
    got = rows(spark, lake_settings, "active_users_daily", "event_date")
    assert sorted(got) == [day(d) for d in range(6, 17)]
    assert [got[day(d)].dau for d in range(6, 17)] == [6, 2, 4, 2, 0, 0, 1, 1, 1, 1, 1]
    assert (got[day(10)].wau, got[day(12)].wau, got[day(13)].wau, got[day(16)].wau) == (9, 9, 8, 5)
    assert (got[day(6)].mau, got[day(16)].mau, got[day(16)].dau_mau_ratio) == (6, 10, 0.1)
    assert (got[day(11)].wau_complete, got[day(12)].wau_complete, got[day(16)].mau_complete) == (
        False, True, False,
    )  # fmt: skip


def test_retention_cohorts(spark: Any, lake_settings: Settings, built: dict) -> None:
    got = rows(spark, lake_settings, "retention_cohorts", "cohort_week", "week_number")
    assert sorted(got) == [(day(6), 0), (day(6), 1), (day(13), 0)]
    first, second = got[day(6), 0], got[day(6), 1]
    assert (first.cohort_size, first.active_users, first.retention, first.week_complete) == (9, 9, 1.0, True)
    assert (second.week_start, second.active_users, second.week_complete) == (day(13), 3, False)  # u4 u1 u6
    assert second.retention == pytest.approx(3 / 9)
    late = got[day(13), 0]  # u8, first seen on the 14th
    assert (late.cohort_size, late.active_users, late.retention) == (1, 1, 1.0)


def test_login_security(spark: Any, lake_settings: Settings, built: dict) -> None:
    got = rows(spark, lake_settings, "login_security_daily", "event_date", "country")
    br = got[day(8), "BR"]
    assert (br.attempts, br.failures, br.failure_rate) == (34, 31, pytest.approx(31 / 34))
    assert (br.accounts, br.failed_accounts, br.ips) == (23, 22, 4)
    assert (br.unknown_account_failures, br.mfa_failures) == (20, 1)
    assert (br.suspect_accounts, br.suspect_ips) == (1, 1)  # victim (10 failures), ip-bad (20 accounts)
    assert br.successes_after_failure == 1  # victim 21 minutes after; mfa-user 2 hours after is not
    de = got[day(13), "DE"]
    assert (de.attempts, de.failures, de.failure_rate, de.suspect_accounts, de.suspect_ips) == (
        1,
        0,
        0.0,
        0,
        0,
    )


def test_user_title_interactions(spark: Any, lake_settings: Settings, built: dict) -> None:
    got = rows(spark, lake_settings, "user_title_interactions", "user_id", "title_id")
    t1 = got["u1", "t1"]  # a1, b4 (failed); rated 3.0 then 4.5
    assert (t1.sessions, t1.watch_time_ms, t1.completions, t1.max_completion_share) == (2, 1_800_000, 0, 0.5)
    assert (utc(t1.last_watched_at), t1.rating, utc(t1.rated_at)) == (jan(15, 18), 4.5, jan(7, 8))
    t2 = got["u1", "t2"]  # a5, b1-b3; b3 reached 1900 s of 1800
    assert (t2.sessions, t2.watch_time_ms, t2.completions, t2.max_completion_share) == (4, 3_300_000, 1, 1.0)
    assert (utc(t2.last_watched_at), t2.rating, t2.rated_at) == (jan(9, 20, 35), None, None)
    assert got["u1", "t3"].max_completion_share is None  # duration unknown
    only_rated = got["u7", "t2"]
    assert (only_rated.sessions, only_rated.watch_time_ms, only_rated.completions) == (0, 0, 0)
    assert (only_rated.last_watched_at, only_rated.rating, utc(only_rated.rated_at)) == (None, 5.0, jan(9, 8))


def test_experiment_user_metrics(spark: Any, lake_settings: Settings, built: dict) -> None:
    got = rows(spark, lake_settings, "experiment_user_metrics", "variant", "user_id")
    u1 = got["control", "u1"]  # exposed 8th 10:00 and 9th 09:00
    assert (utc(u1.first_exposed_at), u1.exposure_date, u1.exposure_count, u1.multiple_variants) == (
        jan(8, 10), day(8), 2, False,
    )  # fmt: skip
    # post: b2, b3, b4 (failed); pre: a1, a5, a9 and b1 (the same day, before the exposure)
    assert (u1.sessions, u1.watch_time_ms, u1.play_failures, u1.rebuffer_ms) == (3, 1_800_000, 1, 100_000)
    assert u1.rebuffer_ratio == pytest.approx(100_000 / 1_900_000)
    assert (u1.pre_sessions, u1.pre_watch_time_ms, u1.pre_play_failures, u1.pre_rebuffer_ratio) == (
        4, 3_900_000, 0, 0.0,
    )  # fmt: skip
    assert (u1.active_days, u1.pre_active_days, u1.retained_d1, u1.retained_d7) == (
        2,
        2,
        True,
        True,
    )  # 9th, 15th
    assert (u1.d1_observable, u1.d7_observable, u1.window_complete) == (True, True, False)

    treated = got["treatment", "u2"]  # exposed 8th 12:00, active again on the 12th (day 4)
    assert (treated.multiple_variants, treated.sessions, treated.rebuffer_ratio, treated.active_days) == (
        True, 0, None, 1,
    )  # fmt: skip
    assert (treated.pre_sessions, treated.pre_watch_time_ms, treated.pre_play_failures) == (2, 3_600_000, 1)
    assert treated.pre_rebuffer_ratio == pytest.approx(200_000 / 3_800_000)
    assert (treated.retained_d1, treated.retained_d7, treated.d7_observable) == (False, True, True)

    switched = got["control", "u2"]  # exposed 10th 12:00: the 12th is day 2, day 7 not over yet
    assert (switched.multiple_variants, switched.active_days, switched.pre_active_days) == (True, 1, 1)
    assert (switched.retained_d1, switched.retained_d7) == (False, True)
    assert (switched.d1_observable, switched.d7_observable) == (True, False)

    late = got["treatment", "u3"]  # exposed 16th 08:00, ten hours before the newest event
    assert (late.pre_sessions, late.pre_rebuffer_ratio, late.pre_active_days) == (1, pytest.approx(1 / 7), 1)
    assert (late.sessions, late.active_days, late.retained_d1, late.retained_d7) == (0, 0, None, None)
    assert (late.d1_observable, late.d7_observable, late.multiple_variants) == (False, False, False)


def test_without_catalog_or_ratings(spark: Any, lake_settings: Settings, silver_lake: Silver) -> None:
    sessions = spark.read.format("delta").load(silver_lake.lake.silver("playback_sessions"))
    pairs = {(r.user_id, r.title_id): r for r in gold.user_title_interactions(sessions).collect()}
    assert len(pairs) == 8  # u7 only rated
    u1 = pairs["u1", "t2"]
    assert (u1.sessions, u1.max_completion_share, u1.rating) == (4, None, None)  # no durations, no ratings
    titles = gold.title_engagement_daily(sessions).where("title_id = 't1'").collect()
    assert {(r.title_name, r.kind, r.genres) for r in titles} == {(None, None, None)}


# --- contracts, registry, the job ----------------------------------------------------------------


def test_tables_match_their_contracts(spark: Any, lake_settings: Settings, built: dict) -> None:
    documented = gold.load_contract()
    assert set(documented["policies"]) >= {"full_recompute", "activity", "percentiles", "experiment_windows"}
    assert list(documented["tables"]) == list(gold.TABLES)
    for name, table in gold.TABLES.items():
        contract = documented["tables"][name]
        columns = [(c["name"], c["type"]) for c in contract["columns"]]
        frame = spark.read.format("delta").load(Lake(lake_settings.lake_dir).gold(name))
        assert frame.dtypes == columns, name
        assert contract["partitioning"] == list(table.partitioning), name
        assert set(contract["key"]) <= {c for c, _ in columns}, name
        assert frame.groupBy(*contract["key"]).count().where("count > 1").isEmpty(), name
        pii = {c["name"] for c in contract["columns"] if c.get("pii")}
        assert pii == ({table.user_column} if table.user_column else set()), name
        ordered = [e for e in contract["expectations"] if "expect_table_columns_to_match_ordered_list" in e]
        assert ordered[0]["expect_table_columns_to_match_ordered_list"]["column_list"] == [
            c for c, _ in columns
        ]


def test_user_tables() -> None:
    assert gold.user_tables() == {"user_title_interactions": "user_id", "experiment_user_metrics": "user_id"}


def test_missing_inputs_are_skipped_and_publish_is_pluggable(
    spark: Any, tmp_path: Path, lake_settings: Settings, built: dict
) -> None:
    empty = Settings(lake_dir=str(tmp_path), spark_master="local[1]", spark_shuffle_partitions=2)
    assert gold.run(empty, spark) == {}
    published: dict[str, int] = {}
    counts = gold.run(
        lake_settings, spark, tables=["cdn_edge_daily"], publish=lambda n, f: published.update({n: f.count()})
    )
    assert counts == published == {"cdn_edge_daily": 2}
    with pytest.raises(ValueError, match="unknown gold table"):
        gold.run(lake_settings, spark, tables=["nope"])


def test_a_rerun_gives_the_same_rows(spark: Any, lake_settings: Settings, built: dict) -> None:
    before = snapshot(spark, lake_settings)
    assert gold.run(lake_settings, spark) == built
    after = snapshot(spark, lake_settings)
    assert after.keys() == before.keys() == set(gold.TABLES)
    for name in before:
        assert after[name] == before[name], name
