"""Erasure on a hand-built lake holding two accounts: every row of the one forgotten is gone
from every table (read by Spark, delta-rs and DuckDB), every row of the other is intact,
older versions cannot be read any more, and the receipt counts what was deleted without
naming the account. The ids are chosen so that the forgotten one is a prefix of the kept
one: matching must be exact, not by substring.

One local Spark session (local[2], 2 shuffle partitions, UI off) and a temp lake per module.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder

from batch import erasure, lake, pseudonymize, sql
from batch.lake import Lake
from reelpulse.contract import Contract
from reelpulse.derive import spark_schema
from reelpulse.settings import Settings

KEY = b"unit-test-pseudonymization-key-0123456789"
GONE, KEPT = "user-0001", "user-00010"
P_GONE, P_KEPT = erasure.pseudonym(GONE, KEY), erasure.pseudonym(KEPT, KEY)
SESSIONS = {GONE: ("s-gone-1", "s-gone-2"), KEPT: ("s-kept-1",)}
T0 = dt.datetime(2025, 1, 10, 12, 0, tzinfo=dt.UTC)
META = "_kafka_topic string, _kafka_partition int, _kafka_offset long, _kafka_timestamp timestamp, " \
    "_schema_id int, _ingested_at timestamp, event_date date"  # fmt: skip
QUARANTINE = "error_type string, reason string, _kafka_topic string, _kafka_partition int, " \
    "_kafka_offset long, _kafka_timestamp timestamp, _schema_id int, original_key binary, " \
    "original_value binary, _ingested_at timestamp"  # fmt: skip
HEADER = b"\x00\x00\x00\x00\x07"  # wire format: magic byte, schema id 7
DELETED = {
    "bronze.playback_start": 2, "bronze.cdn_request": 1, "bronze._quarantine": 3,
    "silver.playback_start": 2, "silver.playback_sessions": 2, "silver.dim_users": 1, "silver._late": 2,
    "gold.user_title_interactions": 1, "gold.title_viewers": 0,
}  # fmt: skip
RAW_ID = re.compile(rf"(?<![\w-]){re.escape(GONE)}(?![\w-])")  # not the prefix of KEPT
TOKENS = re.compile("|".join(rf"(?<![\w-]){re.escape(t)}(?![\w-])" for t in (GONE, P_GONE, *SESSIONS[GONE])))


def mentions_gone(value: Any) -> bool:
    """Whether a row (or any value in it, bytes included) names the forgotten account, its
    pseudonym or one of its sessions, as a whole token (``user-0001`` is not ``user-00010``)."""
    if isinstance(value, dict):
        return any(mentions_gone(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(mentions_gone(v) for v in value)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    return isinstance(value, str) and TOKENS.search(value) is not None


def spark_rows(spark: Any, path: str) -> list[dict[str, Any]]:
    return sorted(
        (r.asDict(recursive=True) for r in spark.read.format("delta").load(path).collect()), key=repr
    )


def delta_rs_rows(path: str, version: int | None = None) -> list[dict[str, Any]]:
    """Rows as delta-rs reads them (its DataFusion scan, which applies deletion vectors)."""
    table = DeltaTable(path, version=version)
    return list(
        pa.table(QueryBuilder().register("t", table).execute("SELECT * FROM t").read_all()).to_pylist()
    )


def snapshot(spark: Any, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    return {t.qualified: spark_rows(spark, t.path) for t in lake.tables(settings.lake_dir)}


# --- the lake --------------------------------------------------------------------------------


def bronze_event(user: str, session: str, n: int) -> dict[str, Any]:
    t = T0 + dt.timedelta(minutes=n)
    envelope = {
        "event_id": f"e-{n}", "event_time": t, "user_id": user, "profile_id": f"{user}-p0",
        "session_id": session,
        "device": {"device_id": f"dev-{user}", "device_type": "TV", "os": "Tizen 8", "app_version": "5.1"},
        "country": "DE", "client_ip": "198.51.100.7",
    }  # fmt: skip
    return {
        "envelope": envelope, "title_id": "t1", "rendition_ladder": [], "initial_bitrate_kbps": 3000,
        "cdn_edge": "edge-1", "startup_time_ms": 900, "success": True, "start_position_ms": 0,
        **meta("reelpulse.playback", n, t),
    }  # fmt: skip


def cdn_line(session: str | None, n: int) -> dict[str, Any]:
    t = T0 + dt.timedelta(minutes=n)
    return {
        "event_id": f"cdn-{n}", "event_time": t, "edge_id": "edge-1", "pop": "FRA", "cache_status": "HIT",
        "bytes_sent": 1000, "http_status": 200, "latency_ms": 20, "client_region": "DE",
        "client_ip": "198.51.100.7", "session_id": session, "title_id": "t1", **meta("reelpulse.cdn", n, t),
    }  # fmt: skip


def meta(topic: str, n: int, t: dt.datetime) -> dict[str, Any]:
    return {
        "_kafka_topic": topic, "_kafka_partition": 0, "_kafka_offset": n, "_kafka_timestamp": t,
        "_schema_id": 7, "_ingested_at": t, "event_date": t.date(),
    }  # fmt: skip


def avro(text: str) -> bytes:
    return erasure.avro_string(text.encode())


def quarantined(key: bytes | None, value: bytes, n: int) -> tuple[Any, ...]:
    return ("undecodable", "does not decode", "reelpulse.playback", 0, n, T0, 7, key, value, T0)


def write(
    spark: Any, path: str, rows: list[Any], schema: Any, *, partition: str | None = None, **options: str
) -> None:
    writer = (
        spark.createDataFrame(rows, schema)
        .coalesce(1)
        .write.format("delta")
        .mode("append")
        .options(**options)
    )
    (writer.partitionBy(partition) if partition else writer).save(path)


def build_bronze(spark: Any, lake: Lake, contract: Contract) -> None:
    from pyspark.sql.types import StructType

    def schema(name: str) -> StructType:
        return StructType(spark_schema(contract[name]).fields + StructType.fromDDL(META).fields)

    starts = lake.bronze("playback_start")
    write(
        spark,
        starts,
        [bronze_event(GONE, "s-gone-1", 1), bronze_event(KEPT, "s-kept-1", 2)],
        schema("playback_start"),
    )
    write(spark, starts, [bronze_event(GONE, "s-gone-2", 3)], schema("playback_start"))
    cdn = [cdn_line("s-gone-1", 4), cdn_line("s-kept-1", 5), cdn_line(None, 6)]
    write(spark, lake.bronze("cdn_request"), cdn, schema("cdn_request"))
    quarantine = [
        quarantined(GONE.encode(), b"\x00garbled", 7),  # keyed by the account
        quarantined(b"s-gone-2", HEADER + avro(GONE) + b"\xff", 8),  # by session and by value
        quarantined(KEPT.encode(), HEADER + avro(KEPT) + b"\xff", 9),  # GONE is a prefix of KEPT: stays
        quarantined(None, json.dumps({"user_id": GONE}).encode(), 10),  # not wire format: JSON
    ]
    write(spark, lake.bronze("_quarantine"), quarantine, QUARANTINE)


def build_silver_and_gold(spark: Any, lake: Lake) -> None:
    events = [
        (f"e-{n}", T0, user, session, "hmac-device", "hmac-ip", "t1", T0.date())
        for n, user, session in ((1, P_GONE, "s-gone-1"), (2, P_KEPT, "s-kept-1"), (3, P_GONE, "s-gone-2"))
    ]
    schema = "event_id string, event_time timestamp, user_id string, session_id string, device_id string, " \
        "client_ip string, title_id string, event_date date"  # fmt: skip
    write(spark, lake.silver("playback_start"), events, schema, partition="event_date")
    sessions = [
        (session, user, "t1", 1000, T0.date())
        for user, session in ((P_GONE, "s-gone-1"), (P_GONE, "s-gone-2"), (P_KEPT, "s-kept-1"))
    ]
    schema = "session_id string, user_id string, title_id string, watch_time_ms long, started_date date"
    write(spark, lake.silver("playback_sessions"), sessions, schema, partition="started_date")
    users = [(P_GONE, "DE"), (P_KEPT, "FR")]
    dv = {"delta.enableDeletionVectors": "true"}  # deletes mark rows; the erasure must purge them
    write(spark, lake.silver("dim_users"), users, "user_id string, home_country string", **dv)
    late = [
        (
            "playback_stop",
            "e-20",
            json.dumps({"event_id": "e-20", "user_id": P_GONE, "session_id": "s-gone-1"}),
        ),
        (
            "playback_stop",
            "e-21",
            json.dumps({"event_id": "e-21", "user_id": P_KEPT, "session_id": "s-kept-1"}),
        ),
        ("cdn_request", "cdn-22", json.dumps({"event_id": "cdn-22", "session_id": "s-gone-2"})),
    ]
    schema = "event_type string, event_key string, payload string, event_date date"
    write(spark, lake.silver("_late"), [(*row, T0.date()) for row in late], schema)
    write(spark, lake.silver("dim_titles"), [("t1", "Night Train")], "title_id string, name string")
    interactions = [(P_GONE, "t1", 2000), (P_KEPT, "t1", 1000)]
    schema = "user_id string, title_id string, watch_ms long"
    write(spark, lake.gold("user_title_interactions"), interactions, schema)


class GoldRebuild:
    """Stands in for ``gold.run``: records its calls and what silver held at that moment, and
    rebuilds one aggregate from silver as gold would."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, settings: Settings, spark: Any) -> dict[str, int]:
        lake = Lake(settings.lake_dir)
        users = {r["user_id"] for r in spark_rows(spark, lake.silver("dim_users"))}
        self.calls.append((settings, spark, users))
        viewers = (
            spark.read.format("delta").load(lake.silver("playback_sessions")).groupBy("title_id").count()
        )
        viewers.write.format("delta").mode("overwrite").save(lake.gold("title_viewers"))
        return {"title_viewers": 1}


@pytest.fixture(scope="module")
def forgotten(spark: Any, lake_settings: Settings) -> tuple[dict[str, Any], erasure.Receipt, GoldRebuild]:
    """The lake before, the receipt of forgetting GONE, and the gold rebuild's record."""
    lake = Lake(lake_settings.lake_dir)
    build_bronze(spark, lake, Contract(lake_settings.schemas_dir))
    build_silver_and_gold(spark, lake)
    GoldRebuild()(lake_settings, spark)  # gold as a previous build left it
    before = snapshot(spark, lake_settings)
    rebuild = GoldRebuild()
    receipt = erasure.forget(lake_settings, spark, GONE, pseudonymization_key=KEY, rebuild_gold=rebuild)
    return before, receipt, rebuild


# --- tests -----------------------------------------------------------------------------------


def test_the_pseudonym_is_the_one_silver_computes(spark: Any) -> None:
    frame = spark.createDataFrame([(GONE,)], "user_id string")
    [row] = frame.select(pseudonymize.hmac_sha256_hex(frame.user_id, KEY)).collect()
    assert row[0] == P_GONE
    assert GONE not in repr(erasure.Subject(GONE, P_GONE))


def test_an_empty_id_is_refused(lake_settings: Settings) -> None:
    with pytest.raises(erasure.ErasureError, match="empty"):
        erasure.forget(lake_settings, None, " ", pseudonymization_key=KEY, rebuild_gold=GoldRebuild())  # type: ignore[arg-type]


def test_only_the_forgotten_account_is_deleted(spark: Any, lake_settings: Settings, forgotten: Any) -> None:
    before, _, _ = forgotten
    after = snapshot(spark, lake_settings)
    assert after.keys() == before.keys()
    assert after.pop("gold.title_viewers") == [{"title_id": "t1", "count": 1}]  # rebuilt: one viewer left
    for name, rows in before.items():
        if name == "gold.title_viewers":
            continue
        kept = [row for row in rows if not mentions_gone(row)]
        assert after[name] == kept, name  # nothing of the account, everything of the other
        assert len(rows) - len(kept) == DELETED.get(name, 0), name


def test_no_reader_finds_the_account(lake_settings: Settings, forgotten: Any) -> None:
    for table in lake.tables(lake_settings.lake_dir):
        rows = delta_rs_rows(table.path)
        assert rows, table.qualified
        assert not any(mentions_gone(row) for row in rows), table.qualified
    for name in sql.lake_tables(lake_settings.lake_dir):
        columns, rows = sql.query(lake_settings.lake_dir, f"SELECT * FROM {name}")
        assert not any(mentions_gone(dict(zip(columns, row, strict=True))) for row in rows), name


def test_older_versions_can_no_longer_be_read(spark: Any, lake_settings: Settings, forgotten: Any) -> None:
    lake = Lake(lake_settings.lake_dir)
    for path in (lake.bronze("playback_start"), lake.silver("dim_users"), lake.bronze("_quarantine")):
        with pytest.raises(Exception, match="FILE_NOT_EXIST"):
            spark.read.format("delta").option("versionAsOf", 0).load(path).collect()
        with pytest.raises(Exception, match="not found"):
            delta_rs_rows(path, version=0)
    assert not list(Path(lake.silver("dim_users")).glob("deletion_vector_*"))  # purged, then vacuumed


def test_the_delete_commits_do_not_hold_the_id(lake_settings: Settings, forgotten: Any) -> None:
    log = Path(Lake(lake_settings.lake_dir).bronze("playback_start")) / "_delta_log"
    commits = sorted(log.glob("*.json"))[2:]  # after the two appends of the hand-built rows
    assert commits
    assert not any(RAW_ID.search(commit.read_text()) for commit in commits)


def test_the_receipt(lake_settings: Settings, forgotten: Any) -> None:
    _, receipt, _ = forgotten
    text = receipt.path.read_text()
    assert not RAW_ID.search(text)
    assert receipt.path.parent == Path(Lake(lake_settings.lake_dir).erasure)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}\.\d{{6}}Z-{P_GONE[:12]}\.json", receipt.path.name)
    written = json.loads(text)
    assert written["subject"]["pseudonym"] == P_GONE
    assert {t["table"]: t["rows_deleted"] for t in written["tables"]} == DELETED
    assert written["rows_deleted"] == sum(DELETED.values())
    for table in written["tables"]:
        assert table["version_after_vacuum"] > table["version_after_delete"], table
    purged = {t["table"] for t in written["tables"] if t["deletion_vectors_purged"]}
    assert purged == {"silver.dim_users"}
    assert any("Kafka" in item for item in written["not_covered"])
    assert written["requested_at"] < written["completed_at"]


def test_gold_is_rebuilt_from_the_cleaned_silver(lake_settings: Settings, forgotten: Any) -> None:
    _, receipt, rebuild = forgotten
    [(settings, _, users_then)] = rebuild.calls
    assert settings is lake_settings
    assert users_then == {P_KEPT}  # silver was already clean when gold was rebuilt
    assert receipt.gold_rebuilt == {"title_viewers": 1}


def test_forgetting_twice_deletes_nothing_and_writes_another_receipt(
    spark: Any, lake_settings: Settings, forgotten: Any
) -> None:
    _, first, _ = forgotten
    second = erasure.forget(lake_settings, spark, GONE, pseudonymization_key=KEY, rebuild_gold=GoldRebuild())
    assert second.path != first.path
    assert second.path.exists()
    assert {t.table: t.rows_deleted for t in second.tables} == dict.fromkeys(DELETED, 0)
