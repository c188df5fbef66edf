"""Pure logic of streams/: rules parsing, statistics, windows, the watermark, hysteresis and
alert ids, partial aggregates and viewer sessions. No services, no Faust."""

from __future__ import annotations

import random
import tomllib

import pytest

from streams import alerts
from streams.alerts import AlertState, Fence, Observation
from streams.config import DEFAULT_RULES, Rule, load_rules, parse_rules, render_rules
from streams.errors import RulesError
from streams.monitors import EdgeHealth, LoginActivity, Quality, Sessions, Starts, Viewers, merged
from streams.stats import Baseline, bucket_of, bucket_value, hist_add, hist_merge, percentile
from streams.windows import Watermark, closed_between, window_start

# --------------------------------------------------------------------------- rules


def test_production_rules_parse_and_keep_one_minute_windows() -> None:
    book = load_rules()
    assert book.windows.quality_s == 60
    assert {r.monitor for r in book.rules} == {"playback", "cdn", "login", "starts"}
    assert book["credential_stuffing"].entity == "source_ip"


def rules_data(**windows: object) -> dict:
    data = tomllib.loads(DEFAULT_RULES.read_text())
    data["windows"].update(windows)
    return data


def test_render_rules_round_trips() -> None:
    data = rules_data(quality_s=10)
    book = parse_rules(tomllib.loads(render_rules(data)))
    assert book.windows.quality_s == 10
    assert book.rules == load_rules().rules


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"monitor": "video"}, "monitor 'video'"),
        ({"entity": "planet"}, "entity 'planet'"),
        ({"metric": "joy"}, "metric 'joy'"),
        ({"clear": 0.5}, "good side"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"severity": "PANIC"}, "severity"),
    ],
)
def test_bad_rules_fail_naming_the_rule(change: dict, problem: str) -> None:
    data = rules_data()
    data["rules"][0].update(change)
    with pytest.raises(RulesError, match=problem) as error:
        parse_rules(data, "rules.toml")
    assert "edge_play_failures" in str(error.value) or "colour" in str(error.value)


def test_duplicate_rule_names_are_refused() -> None:
    data = rules_data()
    data["rules"].append(dict(data["rules"][0]))
    with pytest.raises(RulesError, match="used twice"):
        parse_rules(data)


# --------------------------------------------------------------------------- statistics


def test_percentiles_from_the_histogram_are_within_four_percent() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(7, 0.6) for _ in range(5000)]
    hist: dict[int, int] = {}
    for value in values:
        hist_add(hist, value)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[int(q * len(ordered)) - 1]
        found = percentile(hist, q)
        assert found is not None
        assert abs(found / exact - 1) < 0.04


def test_histograms_merge_like_concatenation() -> None:
    a: dict[int, int] = {}
    b: dict[int, int] = {}
    both: dict[int, int] = {}
    for i, value in enumerate(range(1, 3000, 7)):
        hist_add(a if i % 2 else b, value)
        hist_add(both, value)
    hist_merge(a, b)
    assert a == both
    assert percentile({}, 0.5) is None
    assert bucket_value(bucket_of(0.2)) < 1


def test_baseline_learns_mean_and_ignores_replayed_seconds() -> None:
    baseline = Baseline()
    for second in range(200):
        baseline.update(100.0 + (second % 2) * 10, alpha=0.05, second=second * 1000)
    assert 100 < baseline.mean < 110
    n = baseline.n
    baseline.update(1e6, alpha=0.05, second=150_000)  # replayed after a restart
    assert baseline.n == n
    assert baseline.mean < 110
    z, change = baseline.deviation(50.0, smooth_s=10)
    assert z < -5
    assert change == pytest.approx(50 / baseline.mean - 1)
    assert Baseline.from_json(baseline.to_json()) == baseline


# --------------------------------------------------------------------------- windows


def test_window_start_and_closing() -> None:
    assert window_start(125_400, 60_000) == 120_000
    assert closed_between(None, 500_000, 60_000, 5000) == []
    # watermark passes 65 s and 125 s: windows [0, 60) and [60, 120) close
    assert closed_between(64_000, 126_000, 60_000, 5000) == [0, 60_000]
    assert closed_between(126_000, 126_500, 60_000, 5000) == []


def test_watermark_waits_for_slow_partitions_but_not_idle_ones() -> None:
    now = [0.0]
    mark = Watermark(idle_s=10, clock=lambda: now[0])
    mark.observe("t", 0, 5000)
    mark.observe("t", 1, 2000)
    assert mark.advance() == 2000
    now[0] = 20.0
    mark.observe("t", 0, 9000)  # partition 1 idle for 20 s no longer holds it back
    assert mark.advance() == 9000
    mark.observe("t", 1, 3000)  # it wakes up behind: the watermark does not go back
    assert mark.advance() == 9000


# --------------------------------------------------------------------------- alerts


def rule(**changes: object) -> Rule:
    values: dict = {
        "name": "edge_play_failures",
        "monitor": "playback",
        "entity": "cdn_edge",
        "metric": "play_failure_rate",
        "fire": 0.15,
        "clear": 0.08,
        "min_samples": 30,
        "clear_windows": 2,
        "severity": "CRITICAL",
    }
    return Rule(**{**values, **changes})


def obs(value: float | None, samples: int = 100, window: int = 0) -> Observation:
    return Observation(value, samples, window, window + 60_000)


def test_alert_ids_are_stable_and_distinct() -> None:
    first = alerts.alert_id("r", "cdn_edge", "edge-1", 60_000)
    assert first == alerts.alert_id("r", "cdn_edge", "edge-1", 60_000)
    assert first != alerts.alert_id("r", "cdn_edge", "edge-1", 120_000)
    assert first != alerts.alert_id("r", "cdn_edge", "edge-2", 60_000)
    assert first.startswith("r-")


def test_hysteresis_fires_holds_and_resolves_after_clear_windows() -> None:
    r = rule()
    assert not alerts.breaches(r, obs(0.5, samples=10)), "too few samples to judge"
    assert not alerts.breaches(r, obs(0.1))
    assert alerts.breaches(r, obs(0.2))
    state = alerts.fire(r, "cdn_edge", "edge-1", obs(0.2, window=60_000), seen_at=61_000)
    assert state.first_window == 60_000
    assert not alerts.step_closed(r, state, obs(0.12, window=60_000)), "between clear and fire: holds"
    assert not alerts.step_closed(r, state, obs(0.05, window=120_000))
    assert not alerts.step_closed(r, state, obs(0.10, window=180_000)), "bad again resets the count"
    assert state.clear_count == 0
    assert not alerts.step_closed(r, state, obs(0.05, window=240_000))
    assert alerts.step_closed(r, state, obs(None, samples=0, window=300_000)), "no data counts as clear"
    record = alerts.record(r, state, "RESOLVED", now_ms=1)
    assert record["alert_id"] == state.alert_id
    assert record["threshold"] == 0.08
    assert AlertState.from_json(state.to_json()) == state


def test_below_rules_and_baseline_rules() -> None:
    below = rule(
        metric="cache_hit_ratio", monitor="cdn", direction="below", fire=0.5, clear=0.7, min_samples=1
    )
    assert alerts.breaches(below, obs(0.4))
    assert not alerts.breaches(below, obs(0.6))
    drop = rule(
        monitor="starts",
        entity="global",
        metric="starts_per_s",
        baseline="ewma",
        fire=6.0,
        clear=2.0,
        min_change=0.3,
        min_samples=1,
        direction="below",
    )
    deep = Observation(40.0, 40, 0, 1000, baseline=100.0, score=8.0, change=0.6)
    shallow = Observation(80.0, 80, 0, 1000, baseline=100.0, score=8.0, change=0.2)
    assert alerts.breaches(drop, deep)
    assert not alerts.breaches(drop, shallow)


def test_fence_admits_each_notification_once() -> None:
    fence = Fence({("a-1", "FIRING")})
    assert not fence.admit({"alert_id": "a-1", "status": "FIRING"})
    assert fence.admit({"alert_id": "a-1", "status": "RESOLVED"})
    assert not fence.admit({"alert_id": "a-1", "status": "RESOLVED"})


# --------------------------------------------------------------------------- partial aggregates


def test_quality_metrics_merge_and_round_trip() -> None:
    a, b = Quality(), Quality()
    for i in range(20):
        (a if i % 2 else b).start(success=i % 5 != 0, startup_ms=1000 + i * 10)
    a.heartbeat(10_000, 500, 3000)
    b.heartbeat(10_000, 0, 1000)
    total = merged(Quality, [a, b])
    assert total is not None
    metrics = total.metrics()
    assert metrics["starts"] == 20
    assert metrics["play_failure_rate"] == pytest.approx(4 / 20)
    assert metrics["rebuffer_ratio"] == pytest.approx(500 / 20_000)
    assert metrics["avg_bitrate_kbps"] == pytest.approx(2000)
    assert 1000 < (metrics["startup_p50_ms"] or 0) < 1200
    a.offset = 7
    assert Quality.from_json(a.to_json()).to_json() == a.to_json()


def test_edge_login_starts_viewers_round_trip() -> None:
    edge = EdgeHealth()
    edge.request(503, False, 900)
    edge.request(200, True, 40)
    assert edge.metrics()["error_rate"] == 0.5
    assert edge.metrics()["cache_hit_ratio"] == 0.5
    login = LoginActivity()
    login.attempt(False, "user-1", track_failed_only=True)
    login.attempt(True, "user-2", track_failed_only=True)
    assert login.metrics()["failed_accounts"] == 1
    assert login.metrics()["failure_rate"] == 0.5
    for cls, state in ((EdgeHealth, edge), (LoginActivity, login), (Starts, Starts()), (Viewers, Viewers())):
        assert cls.from_json(state.to_json()).to_json() == state.to_json()


def test_sessions_count_viewers_until_stop_or_silence() -> None:
    sessions = Sessions(ttl_ms=30_000)
    sessions.seen(0, "s1", "t1", 1000, stopped=False)
    sessions.seen(0, "s2", "t1", 1000, stopped=False)
    sessions.seen(1, "s3", "t2", 1000, stopped=False)
    assert sessions.counts == {(0, "t1"): 2, (1, "t2"): 1}
    sessions.seen(0, "s1", "t1", 5000, stopped=True)
    assert sessions.counts[(0, "t1")] == 1
    sessions.seen(0, "s2", "t1", 20_000, stopped=False)
    assert sessions.expire(45_000) == 1, "s3 silent since 1 s, s2 seen at 20 s"
    assert sessions.counts == {(0, "t1"): 1, (1, "t2"): 0}
