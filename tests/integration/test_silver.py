"""Silver against the simulator's ground truth: simulator -> Kafka -> bronze -> silver.

The simulator's traffic (with some events produced twice) goes through the real broker
and registry; one bronze run and one silver run later, silver holds every event once,
one row per playback session, sessions the simulator killed (no stop) are closed by
TIMEOUT, no raw user id, device id or IP is left, and a second silver run changes nothing.

Other modules of the same pytest session produce into the same topics, so this one uses
its own seed and a start 30 days later (its events are the newest, its ids its own) and
compares only what it produced.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch import bronze, dimensions, sessions, silver
from batch.lake import Lake
from reelpulse import registry
from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import DEFAULT_START_MS, SimulationConfig, Simulator, activity, engine
from reelpulse.testing import running_stack

KEY = b"integration-test-pseudonymization-key"
TIMEOUT = dt.timedelta(minutes=3)  # > the longest silence of a live session (a 2-minute pause)
CONFIG = SimulationConfig(
    seed=23, start_ms=DEFAULT_START_MS + 30 * 86_400_000, users=120, titles=30, rate=12.0,
    duration_s=540.0, heartbeat_cap=4, app_kill_rate=0.15,
)  # fmt: skip
DUPLICATED = 300
# Playback (sessions), catalog (dim_titles), CDN logs (dim_cdn_edges), searches (free-text pii):
# every kind of silver table, in fewer bronze and silver queries than all topics.
TOPICS = ("reelpulse.playback", "reelpulse.catalog", "reelpulse.cdn", "reelpulse.searches")


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack of this module's own: the checks below compare whole topics with the
    simulator's ground truth, so no other test may have produced into them."""
    with running_stack(tmp_path_factory.mktemp("silver-stack")) as settings:
        yield settings


@pytest.fixture(scope="module")
def contract(own_stack: Settings) -> Contract:
    return Contract(own_stack.schemas_dir)


@pytest.fixture(scope="module")
def schema_ids(own_stack: Settings, contract: Contract) -> dict[str, int]:
    return registry.lookup_ids(own_stack, contract)  # running_stack registered them


@pytest.fixture(scope="module")
def lake_settings(own_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = own_stack
    lake = tmp_path_factory.mktemp("silver-lake")
    return settings.model_copy(
        update={
            "lake_dir": str(lake),
            "spark_master": "local[2]",
            "silver_session_timeout_minutes": TIMEOUT // dt.timedelta(minutes=1),
        }
    )


def simulate() -> tuple[Simulator, list[tuple[str, dict]], list[Any]]:
    """The events, and the plan of every playback session (ground truth per session:
    start time, play failure, killed), recorded as the simulator draws them."""
    plans: list[Any] = []

    def recording(original: Any) -> Any:
        def plan(*args: Any, **kwargs: Any) -> Any:
            plans.append(original(*args, **kwargs))
            return plans[-1]

        return plan

    simulator = Simulator(CONFIG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "plan_session", recording(engine.plan_session))
        patch.setattr(activity, "plan_session", recording(activity.plan_session))
        events = list(simulator.events())
    return simulator, events, plans


@pytest.fixture(scope="module")
def produced(lake_settings: Settings, contract: Contract, schema_ids: dict[str, int]) -> dict:
    simulator, all_events, plans = simulate()
    events = [(name, record) for name, record in all_events if contract[name].topic in TOPICS]
    titles = simulator.catalog()
    with EventProducer(lake_settings, contract, schema_ids=schema_ids) as producer:
        producer.produce_all(("title", t) for t in titles)
        producer.produce_all(events)
        producer.produce_all(events[:DUPLICATED])  # an at-least-once client sending again
    return {"simulator": simulator, "events": events, "plans": plans, "titles": titles}


@pytest.fixture(scope="module")
def built(spark: Any, lake_settings: Settings, produced: dict) -> dict:
    bronze.run(lake_settings, spark, topics=list(TOPICS))
    silver.run(lake_settings, spark, pseudonymization_key=KEY)
    return produced


def read(spark: Any, settings: Settings, name: str) -> Any:
    return spark.read.format("delta").load(Lake(settings.lake_dir).silver(name))


def envelope(record: dict) -> dict:
    return record.get("envelope", record)


def mine(events: list[tuple[str, dict]]) -> dict[str, list[dict]]:
    """Our sessions' events by session id, in time order."""
    found: dict[str, list[dict]] = {}
    for name, record in events:
        if name in sessions.PLAYBACK_EVENTS:
            found.setdefault(envelope(record)["session_id"], []).append({"type": name, **record})
    return found


def test_every_event_lands_once(spark: Any, lake_settings: Settings, built: dict) -> None:
    produced: dict[str, set[str]] = {}
    for name, record in built["events"]:
        produced.setdefault(name, set()).add(envelope(record)["event_id"])
    for name, ids in sorted(produced.items()):
        landed = Counter(r.event_id for r in read(spark, lake_settings, name).select("event_id").collect())
        assert {i: n for i, n in landed.items() if i in ids} == dict.fromkeys(ids, 1), name


def test_sessions_match_the_ground_truth(spark: Any, lake_settings: Settings, built: dict) -> None:
    ours, plans = mine(built["events"]), built["plans"]
    rows = {
        r.session_id: r
        for r in read(spark, lake_settings, sessions.SESSIONS).collect()
        if r.session_id in ours
    }
    assert rows.keys() == ours.keys()
    in_run = [p for p in plans if CONFIG.start_ms <= p.start_ms < CONFIG.end_ms]  # not warm, not pilot
    assert {s for s, r in rows.items() if r.has_start} == {p.who.session_id for p in in_run}
    assert {s for s, r in rows.items() if r.play_failed} == {
        p.who.session_id for p in in_run if not p.success
    }
    warm = {p.who.session_id for p in plans if p.start_ms < CONFIG.start_ms} & ours.keys()
    assert {s for s, r in rows.items() if not r.has_start} == warm  # running before the simulation began
    assert 0 < len(warm) <= built["simulator"].truth.sessions["warm"]  # (some warm ones only rate)
    timeout_ms = TIMEOUT / dt.timedelta(milliseconds=1)
    newest = max(envelope(e)["event_time"] for events in ours.values() for e in events)
    silent = {s for s, events in ours.items() if envelope(events[-1])["event_time"] < newest - timeout_ms}
    killed = {p.who.session_id for p in plans if p.killed}
    timed_out = {s for s, r in rows.items() if r.exit_reason == sessions.TIMEOUT}
    assert timed_out == silent & killed
    assert len(timed_out) > 5, "the simulation should kill sessions long before its end"
    for session_id, events in ours.items():
        stops = [e["reason"] for e in events if e["type"] == "playback_stop"]
        if stops:
            assert rows[session_id].exit_reason == stops[-1]
        assert rows[session_id].state == ("OPEN" if rows[session_id].exit_reason is None else "CLOSED")


def test_watch_time_agrees_with_positions(spark: Any, lake_settings: Settings, built: dict) -> None:
    """Without seeks, a session's watch time is how far it moved through the title: the
    simulator keeps ``position delta = interval - rebuffer - paused`` in every heartbeat."""
    rows = {r.session_id: r for r in read(spark, lake_settings, sessions.SESSIONS).collect()}
    checked = 0
    for session_id, events in mine(built["events"]).items():
        kinds = {e["type"] for e in events}
        if {"playback_start", "playback_stop"} <= kinds and "playback_seek" not in kinds:
            start = next(e for e in events if e["type"] == "playback_start")
            stop = next(e for e in events if e["type"] == "playback_stop")
            assert rows[session_id].watch_time_ms == stop["position_ms"] - start["start_position_ms"]
            checked += 1
    assert checked > 20


def test_no_raw_personal_data_in_silver(spark: Any, lake_settings: Settings, built: dict) -> None:
    users = built["simulator"].truth.users
    raw = set(users) | {d[k] for u in users.values() for d in u["devices"] for k in ("device_id", "ip")}
    raw |= {p for u in users.values() for p in u["profiles"]}
    for name in silver_tables(lake_settings):
        frame = read(spark, lake_settings, name)
        strings = [c for c, t in frame.dtypes if t == "string"]
        values = {v for row in frame.select(*strings).distinct().collect() for v in row}
        assert not values & raw, name


def test_dimensions_match_the_catalog_and_edges(spark: Any, lake_settings: Settings, built: dict) -> None:
    truth = built["simulator"].truth
    titles = {r.title_id: r.duration_s for r in read(spark, lake_settings, dimensions.TITLES).collect()}
    assert {t: titles[t] for t in truth.titles} == {t: v["duration_s"] for t, v in truth.titles.items()}
    edges = {r.edge_id: r.pop for r in read(spark, lake_settings, dimensions.EDGES).collect()}
    seen = {r["edge_id"] for n, r in built["events"] if n == "cdn_request"}
    assert {e: edges[e] for e in seen} == {e: truth.edges[e]["pop"] for e in seen}


def test_a_second_run_yields_the_same_rows(spark: Any, lake_settings: Settings, built: dict) -> None:
    before = snapshot(spark, lake_settings)
    silver.run(lake_settings, spark, pseudonymization_key=KEY)
    assert snapshot(spark, lake_settings) == before


def silver_tables(settings: Settings) -> list[str]:
    root = Path(settings.lake_dir) / "silver"
    return sorted(p.parent.name for p in root.glob("*/_delta_log"))


def snapshot(spark: Any, settings: Settings) -> dict[str, Counter]:
    return {t: Counter(map(repr, read(spark, settings, t).collect())) for t in silver_tables(settings)}
