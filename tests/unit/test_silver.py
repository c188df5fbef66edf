"""Silver on hand-built bronze rows: keyed pseudonyms equal Python's HMAC, duplicates and
late events, sessionization with a timeout, dimensions, and reruns that change nothing.

One local Spark session (local[1], 2 shuffle partitions, UI off) and a temp lake per module;
bronze tables are written directly in bronze's shape, so no broker or registry is needed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import shutil
from pathlib import Path
from typing import Any

import pytest

from batch import dimensions, pseudonymize, sessions, silver
from batch.lake import Lake
from reelpulse.contract import Contract
from reelpulse.derive import spark_schema
from reelpulse.settings import Settings

KEY = b"unit-test-pseudonymization-key-0123456789"
T0 = dt.datetime(2025, 1, 10, 12, 0, tzinfo=dt.UTC)
IPS = {"u1": "198.51.100.7", "u2": "203.0.113.9"}
META = "_kafka_topic string, _kafka_partition int, _kafka_offset long, _kafka_timestamp timestamp, " \
    "_schema_id int, _ingested_at timestamp, event_date date"  # fmt: skip


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def seconds(collected: dt.datetime) -> float:
    """Seconds after T0 of a timestamp Spark returned (naive, in the driver's local zone)."""
    return collected.timestamp() - T0.timestamp()


@pytest.fixture(scope="module")
def contract(lake_settings: Settings) -> Contract:
    return Contract(lake_settings.schemas_dir)


class Bronze:
    """Writes rows in bronze's shape: the event's fields, Kafka coordinates, event_date."""

    def __init__(self, spark: Any, settings: Settings, contract: Contract) -> None:
        self.spark, self.contract, self.root = spark, contract, settings.lake_dir
        self.offset = 0

    def envelope(self, t: dt.datetime, session: str, user: str, event_id: str | None = None) -> dict:
        self.offset += 1
        return {
            "event_id": event_id or f"e-{self.offset:04d}",
            "event_time": t,
            "user_id": user,
            "profile_id": f"{user}-kids",
            "session_id": session,
            "device": {
                "device_id": f"dev-{user}",
                "device_type": "TV",
                "os": "Tizen 8",
                "app_version": "5.1",
            },
            "country": "DE",
            "client_ip": IPS[user],
        }

    def write(self, name: str, records: list[dict], kafka_delay: dt.timedelta | None = None) -> None:
        from pyspark.sql.types import StructType

        schema = StructType(spark_schema(self.contract[name]).fields + StructType.fromDDL(META).fields)
        rows = []
        for record in records:
            self.offset += 1
            t = record.get("envelope", record)["event_time"]
            meta = {
                "_kafka_topic": self.contract[name].topic,
                "_kafka_partition": 0,
                "_kafka_offset": self.offset,
                "_kafka_timestamp": t + (kafka_delay or dt.timedelta(seconds=1)),
                "_schema_id": 1,
                "_ingested_at": t,
                "event_date": t.date(),
            }
            rows.append({**record, **meta})
        frame = self.spark.createDataFrame(rows, schema)
        frame.write.format("delta").mode("append").partitionBy("event_date").save(
            f"{self.root}/bronze/{name}"
        )


def start(b: Bronze, t: float, session: str, user: str, success: bool = True) -> dict:
    return {
        "envelope": b.envelope(at(t), session, user), "title_id": "t1", "rendition_ladder": [],
        "initial_bitrate_kbps": 3000, "cdn_edge": "edge-fra-1", "startup_time_ms": 900 if success else 5000,
        "success": success, "start_position_ms": 0,
    }  # fmt: skip


def beat(b: Bronze, t: float, session: str, user: str, position: int, interval: int, **extra: int) -> dict:
    values = {"bitrate_kbps": 3000, "rebuffer_count": 0, "rebuffer_ms": 0} | extra
    return {
        "envelope": b.envelope(at(t), session, user), "title_id": "t1", "position_ms": position,
        "interval_ms": interval, "resolution": "P1080", "buffer_ms": 20_000, "dropped_frames": 0,
        "cdn_edge": "edge-fra-1", **values,
    }  # fmt: skip


def stop(b: Bronze, t: float, session: str, user: str, position: int, reason: str) -> dict:
    return {
        "envelope": b.envelope(at(t), session, user),
        "title_id": "t1",
        "position_ms": position,
        "reason": reason,
    }


def cdn(t: float, user: str) -> dict:
    return {
        "event_id": f"cdn-{t}", "event_time": at(t), "edge_id": "edge-fra-1", "pop": "FRA",
        "cache_status": "HIT", "bytes_sent": 1_500_000, "http_status": 200, "latency_ms": 20,
        "client_region": "DE", "client_ip": IPS[user], "session_id": "s-done", "title_id": "t1",
    }  # fmt: skip


def title(t: float, duration_s: int) -> dict:
    return {
        "title_id": "t1", "event_time": at(t), "name": "Night Train", "kind": "MOVIE",
        "genres": ["thriller"], "duration_s": duration_s, "release_year": 2019,
    }  # fmt: skip


def read(spark: Any, settings: Settings, name: str) -> Any:
    return spark.read.format("delta").load(Lake(settings.lake_dir).silver(name))


def snapshot(spark: Any, settings: Settings) -> dict[str, list]:
    """Every silver table's rows, sorted, to compare runs."""
    root = Path(settings.lake_dir) / "silver"
    tables = sorted(p.parent.name for p in root.glob("*/_delta_log"))
    return {t: sorted(map(tuple, read(spark, settings, t).collect()), key=repr) for t in tables}


# --- pseudonymization ----------------------------------------------------------------------


def test_keyed_hash_equals_python_hmac(spark: Any) -> None:
    values = ["u-123", "198.51.100.7", "Zoë 🎬", "", None]
    long_key = KEY * 3  # longer than the 64-byte block: hashed first, as RFC 2104 says
    frame = spark.createDataFrame([(v,) for v in values], "v string")
    for key in (KEY, long_key):
        got = [r[0] for r in frame.select(pseudonymize.hmac_sha256_hex(frame.v, key)).collect()]
        expected = [
            hmac.new(key, v.encode(), hashlib.sha256).hexdigest() if v is not None else None for v in values
        ]
        assert got == expected


def test_a_short_key_is_refused() -> None:
    with pytest.raises(pseudonymize.PseudonymizationKeyError, match="at least 16 bytes"):
        pseudonymize.pads(b"secret")


def test_pii_fields_map_to_flat_silver_columns(contract: Contract) -> None:
    assert pseudonymize.pii_columns(contract["search"]) == (
        "user_id", "profile_id", "device_id", "client_ip", "query",
    )  # fmt: skip
    assert pseudonymize.pii_columns(contract["cdn_request"]) == ("client_ip",)
    assert pseudonymize.pii_columns(contract["title"]) == ()


# --- sessionization on the long form -------------------------------------------------------


def long_events(spark: Any, rows: list[dict]) -> Any:
    schema = "event_type string, " + ", ".join(f"{c} {t}" for c, t in sessions.FIELDS.items())
    full = [{c: r.get(c) for c in ["event_type", *sessions.FIELDS]} for r in rows]
    return spark.createDataFrame(full, schema)


def test_sessionize_measures_watch_rebuffer_bitrate_and_exit(spark: Any) -> None:
    s = {"session_id": "s1", "user_id": "u", "title_id": "t1", "device_type": "TV", "country": "DE"}
    rows = [
        {
            **s,
            "event_type": "playback_start",
            "event_time": at(0),
            "startup_time_ms": 900,
            "success": True,
            "start_position_ms": 0,
            "cdn_edge": "e1",
        },
        {
            **s,
            "event_type": "playback_heartbeat",
            "event_time": at(10),
            "position_ms": 9000,
            "interval_ms": 10_000,
            "rebuffer_count": 1,
            "rebuffer_ms": 1000,
            "bitrate_kbps": 3000,
        },
        {**s, "event_type": "playback_pause", "event_time": at(12), "position_ms": 11_000},
        {
            **s,
            "event_type": "playback_resume",
            "event_time": at(17),
            "position_ms": 11_000,
            "paused_ms": 5000,
        },
        {
            **s,
            "event_type": "playback_heartbeat",
            "event_time": at(25),
            "position_ms": 19_000,
            "interval_ms": 15_000,
            "rebuffer_count": 0,
            "rebuffer_ms": 0,
            "bitrate_kbps": 6000,
        },
        {
            **s,
            "event_type": "playback_stop",
            "event_time": at(25),
            "position_ms": 19_000,
            "reason": "USER_EXIT",
        },
        {
            **s,
            "session_id": "killed",
            "event_type": "playback_heartbeat",
            "event_time": at(30),
            "position_ms": 10_000,
            "interval_ms": 10_000,
            "rebuffer_count": 0,
            "rebuffer_ms": 0,
            "bitrate_kbps": 1,
        },
        {
            **s,
            "session_id": "open",
            "event_type": "playback_heartbeat",
            "event_time": at(3600),
            "position_ms": 20_000,
            "interval_ms": 10_000,
            "rebuffer_count": 0,
            "rebuffer_ms": 0,
            "bitrate_kbps": 1,
        },
    ]
    titles = spark.createDataFrame([("t1", 20)], "title_id string, duration_s int")
    out = sessions.sessionize(long_events(spark, rows), titles, dt.timedelta(minutes=30), at(3600))
    got = {r.session_id: r for r in out.collect()}
    done = got["s1"]
    assert done.watch_time_ms == 19_000  # (10000 - 1000) + 15000 - 5000 paused = the position reached
    assert (done.rebuffer_count, done.rebuffer_ms) == (1, 1000)
    assert done.rebuffer_ratio == pytest.approx(1000 / 20_000)
    assert done.avg_bitrate_kbps == pytest.approx((3000 * 10_000 + 6000 * 15_000) / 25_000)
    assert (done.exit_reason, done.state, done.completed) == (
        "USER_EXIT",
        "CLOSED",
        True,
    )  # 19 s >= 95% of 20
    assert (seconds(done.started_at), seconds(done.ended_at)) == (0, 25)
    assert (done.startup_time_ms, done.cdn_edge) == (900, "e1")
    assert (got["killed"].exit_reason, got["killed"].state, got["killed"].has_start) == (
        "TIMEOUT",
        "CLOSED",
        False,
    )
    assert (got["open"].exit_reason, got["open"].state) == (None, "OPEN")


# --- the job on hand-built bronze ----------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(spark: Any, lake_settings: Settings, contract: Contract) -> Bronze:
    """Run 1: a finished session, a failed start, a session killed early, one still open;
    a duplicate of a heartbeat; two catalog versions of the title."""
    b = Bronze(spark, lake_settings, contract)
    dup = beat(b, 10, "s-done", "u1", 9000, 10_000, rebuffer_count=1, rebuffer_ms=1000)
    b.write("title", [title(-86_400, 3000), title(0, 3600)])
    b.write(
        "playback_start",
        [
            start(b, 0, "s-done", "u1"),
            start(b, 0, "s-killed", "u2"),
            start(b, 300, "s-fail", "u2", success=False),
            start(b, 3600, "s-open", "u1"),
        ],
    )
    b.write(
        "playback_heartbeat",
        [
            dup,
            dup,
            beat(b, 20, "s-done", "u1", 19_000, 10_000),
            beat(b, 10, "s-killed", "u2", 10_000, 10_000),
            beat(b, 3610, "s-open", "u1", 10_000, 10_000),
        ],
    )
    b.write(
        "playback_stop",
        [stop(b, 20, "s-done", "u1", 19_000, "USER_EXIT"), stop(b, 305, "s-fail", "u2", 0, "ERROR")],
    )
    b.write("cdn_request", [cdn(10, "u1")])
    silver.run(lake_settings, spark, pseudonymization_key=KEY)
    return b


def test_duplicates_are_merged_once(spark: Any, lake_settings: Settings, first_run: Bronze) -> None:
    beats = read(spark, lake_settings, "playback_heartbeat")
    assert beats.count() == 4
    assert beats.select("event_id").distinct().count() == 4


def test_personal_fields_are_keyed_hashes(spark: Any, lake_settings: Settings, first_run: Bronze) -> None:
    raw = {"u1", "u2", "u1-kids", "dev-u1", *IPS.values()}
    for name, rows in snapshot(spark, lake_settings).items():
        values = {v for row in rows for v in row if isinstance(v, str)}
        assert not values & raw, name
    starts = read(spark, lake_settings, "playback_start")
    expected = hmac.new(KEY, b"u1", hashlib.sha256).hexdigest()
    assert expected in {r.user_id for r in starts.collect()}


def test_sessions_from_hand_built_events(spark: Any, lake_settings: Settings, first_run: Bronze) -> None:
    got = {r.session_id: r for r in read(spark, lake_settings, "playback_sessions").collect()}
    assert set(got) == {"s-done", "s-killed", "s-fail", "s-open"}
    assert (got["s-done"].watch_time_ms, got["s-done"].exit_reason, got["s-done"].completed) == (
        19_000, "USER_EXIT", False,  # 19 s of a 3600 s title (the latest catalog version)
    )  # fmt: skip
    assert (got["s-killed"].exit_reason, got["s-killed"].state) == ("TIMEOUT", "CLOSED")
    assert (got["s-fail"].play_failed, got["s-fail"].exit_reason, got["s-fail"].watch_time_ms) == (
        True,
        "ERROR",
        0,
    )
    assert (got["s-open"].exit_reason, got["s-open"].state) == (None, "OPEN")


def test_dimensions(spark: Any, lake_settings: Settings, first_run: Bronze) -> None:
    titles = read(spark, lake_settings, dimensions.TITLES).collect()
    assert [(t.title_id, t.duration_s) for t in titles] == [("t1", 3600)]
    users = {r.user_id: r for r in read(spark, lake_settings, dimensions.USERS).collect()}
    u1 = users[hmac.new(KEY, b"u1", hashlib.sha256).hexdigest()]
    assert (u1.home_country, seconds(u1.first_seen), seconds(u1.last_seen)) == ("DE", 0, 3610)
    devices = read(spark, lake_settings, dimensions.DEVICES).collect()
    assert {(d.device_type, d.os) for d in devices} == {("TV", "Tizen 8")}
    assert len(devices) == 2


def test_second_run_late_events_and_closing_an_open_session(
    spark: Any, lake_settings: Settings, first_run: Bronze
) -> None:
    b = first_run
    b.write("playback_heartbeat", [
        beat(b, 3620, "s-open", "u1", 20_000, 10_000),
        beat(b, -5 * 86_400, "s-old", "u2", 10_000, 10_000),  # 5 days before the watermark
    ])  # fmt: skip
    b.write("playback_stop", [stop(b, 3620, "s-open", "u1", 20_000, "COMPLETED")])
    future = stop(b, 7200, "s-future", "u2", 0, "OTHER")
    b.write("playback_stop", [future], kafka_delay=-dt.timedelta(days=2))  # clock 2 days ahead
    counts = silver.run(lake_settings, spark, pseudonymization_key=KEY)
    assert counts.events["playback_heartbeat"] == {"merged": 1, "late": 1}
    assert counts.events["playback_stop"] == {"merged": 1, "late": 1}
    assert silver.LATE in counts.derived
    late = {r.reason: r for r in read(spark, lake_settings, silver.LATE).collect()}
    assert set(late) == {silver.TOO_LATE, silver.FUTURE}
    assert late[silver.TOO_LATE].event_type == "playback_heartbeat"
    assert seconds(late[silver.TOO_LATE].watermark) == 3610
    assert "u2" not in late[silver.TOO_LATE].payload
    got = {r.session_id: r for r in read(spark, lake_settings, "playback_sessions").collect()}
    assert "s-old" not in got
    assert "s-future" not in got
    assert (got["s-open"].state, got["s-open"].exit_reason, got["s-open"].completed) == (
        "CLOSED",
        "COMPLETED",
        True,
    )


def test_rerun_and_replay_yield_the_same_rows(spark: Any, lake_settings: Settings, first_run: Bronze) -> None:
    before = snapshot(spark, lake_settings)
    assert silver.run(lake_settings, spark, pseudonymization_key=KEY).tables == []  # nothing new
    assert snapshot(spark, lake_settings) == before
    shutil.rmtree(Path(Lake(lake_settings.lake_dir).offsets))  # forget the marks: replay all
    silver.run(lake_settings, spark, pseudonymization_key=KEY)
    after = snapshot(spark, lake_settings)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], name


def test_tables_match_their_contracts(
    spark: Any, lake_settings: Settings, contract: Contract, first_run: Bronze
) -> None:
    documented = silver.load_contract()
    root = Path(lake_settings.lake_dir) / "silver"
    written = {str(p.parent.relative_to(root)) for p in root.glob("**/_delta_log")} - set(contract.events)
    assert written <= documented["tables"].keys()  # every derived table has a contract
    for name in sorted(written):
        columns = [(c["name"], c["type"]) for c in documented["tables"][name]["columns"]]
        assert read(spark, lake_settings, name).dtypes == columns, name
    events = documented["event_tables"]["columns"]
    envelope = [(c["name"], c["type"]) for c in events[: len(silver.ENVELOPE_COLUMNS)]]
    meta = [(c["name"], c["type"]) for c in events[len(silver.ENVELOPE_COLUMNS) + 1 :]]
    for name in ("playback_start", "playback_heartbeat", "playback_stop"):
        dtypes = read(spark, lake_settings, name).dtypes
        own = [f["name"] for f in contract[name].schema["fields"] if f["name"] != "envelope"]
        assert dtypes[: len(envelope)] == envelope, name
        assert [c for c, _ in dtypes[len(envelope) : -len(meta)]] == own, name
        assert dtypes[-len(meta) :] == meta, name


def test_replay_after_a_crash_never_sends_merged_rows_to_late(
    spark: Any, contract: Contract, tmp_path: Path
) -> None:
    """A backfill spanning more than the allowed lateness is merged whole on its first run
    (no watermark yet). Replaying it, as after a crash before the marks advanced, sees a
    watermark raised by its own rows: the old rows it already merged must not go to _late."""
    settings = Settings(lake_dir=str(tmp_path), spark_master="local[1]", spark_shuffle_partitions=2)
    b = Bronze(spark, settings, contract)
    b.write("playback_heartbeat", [
        beat(b, -10 * 86_400, "s-backfill", "u1", 10_000, 10_000),
        beat(b, 0, "s-now", "u2", 10_000, 10_000),
    ])  # fmt: skip
    ran = silver.run(settings, spark, pseudonymization_key=KEY, tables=["playback_heartbeat"])
    assert ran == silver.SilverRun(
        {"playback_heartbeat": {"merged": 2, "late": 0}}, ["dim_devices", "dim_users", "playback_sessions"]
    )
    before = snapshot(spark, settings)
    shutil.rmtree(Path(Lake(settings.lake_dir).offsets))  # the crash: marks never advanced
    silver.run(settings, spark, pseudonymization_key=KEY, tables=["playback_heartbeat"])
    assert snapshot(spark, settings) == before
    assert not (Path(settings.lake_dir) / "silver" / silver.LATE).exists()


def test_a_session_batch_failing_its_gate_is_held_and_the_marks_stay(
    spark: Any, contract: Contract, tmp_path: Path
) -> None:
    """Write-audit-publish in silver: a stop before its start gives a session that ends
    before it starts. The playback_sessions gate rejects the batch, which stays under
    _audit; no session is published and the marks do not advance, so the next run retries."""
    from batch import pipeline, quality

    settings = Settings(lake_dir=str(tmp_path), spark_master="local[2]", spark_shuffle_partitions=2)
    b = Bronze(spark, settings, contract)
    b.write("title", [title(-86_400, 3600)])
    b.write("playback_start", [start(b, 600, "s-backwards", "u1")])
    b.write("playback_stop", [stop(b, 0, "s-backwards", "u1", 0, "USER_EXIT")])
    gate = quality.Gate(settings, spark)
    with pytest.raises(quality.QualityGateFailed) as failed:
        silver.run(settings, spark, pseudonymization_key=KEY, audit=pipeline.silver_audit(gate))
    assert failed.value.table == "playback_sessions"
    assert any("ended_at" in line for line in failed.value.failed)
    lake = Lake(settings.lake_dir)
    held = spark.read.format("delta").load(lake.audit("silver", "playback_sessions")).collect()
    assert [row.session_id for row in held] == ["s-backwards"]
    assert not Path(lake.silver(sessions.SESSIONS)).exists()
    assert not Path(lake.offsets).exists()
