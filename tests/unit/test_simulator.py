"""The traffic simulator: valid, deterministic, bounded, and carrying the signals it claims.

Every statistical check compares what the events show with the ground truth the simulator
recorded (tastes, incident windows and targets, model parameters), never with numbers
copied from a run. Runs are seeded, so the checks are deterministic.
"""

from __future__ import annotations

import itertools
import statistics
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import pytest

from reelpulse.contract import Contract
from reelpulse.settings import Settings
from reelpulse.simulator import GroundTruth, Incident, SimulationConfig, Simulator
from reelpulse.simulator.records import uuid4

NOT_SIMULATED = {"alert", "dead_letter", "title"}


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(Settings().schemas_dir)


def event_time(record: dict[str, Any]) -> int:
    return int(record["envelope"]["event_time"] if "envelope" in record else record["event_time"])


def run(**overrides: Any) -> tuple[Simulator, list[tuple[str, dict[str, Any]]]]:
    sim = Simulator(SimulationConfig(**overrides))
    return sim, list(sim.events())


# -- contract -------------------------------------------------------------------------------


def test_every_event_validates_and_every_event_type_appears(contract: Contract) -> None:
    incidents = [
        Incident("edge_outage", 0, 3),
        Incident("login_attack", 0, 3),
        Incident("play_failure_spike", 0, 3),
    ]
    sim, events = run(seed=1, max_events=8000, incidents=incidents)
    for event_type, record in events:
        contract[event_type].check(record)
    for record in sim.catalog():
        contract["title"].check(record)
    assert {t for t, _ in events} == {e.name for e in contract} - NOT_SIMULATED
    assert len(sim.catalog()) == sim.config.titles


def test_seeded_uuid_is_a_standard_version_4_uuid() -> None:
    a, b = Random(3), Random(3)
    for _ in range(200):
        assert uuid4(a) == str(uuid.UUID(int=b.getrandbits(128), version=4))


def test_identifiers_are_synthetic() -> None:
    _, events = run(seed=2, max_events=3000, incidents=[Incident("login_attack", 0, 1)])
    for _, record in events:
        ip = record["envelope"]["client_ip"] if "envelope" in record else record["client_ip"]
        assert ip.startswith(("10.", "203.0.113."))


# -- determinism and bounds -----------------------------------------------------------------


def test_same_seed_gives_the_same_events_and_other_seeds_differ() -> None:
    config = dict(rate=500.0, max_events=5000, incidents=[Incident("edge_outage", 1, 2)])
    _, first = run(seed=5, **config)
    sim, second = run(seed=5, **config)
    _, other = run(seed=6, **config)
    assert first == second
    assert list(sim.events()) == first  # a second pass replays the same stream
    assert [r for _, r in other] != [r for _, r in first]
    assert {t for t, _ in first} == {t for t, _ in other}


def test_one_world_seed_keeps_the_catalog_and_users_across_traffic_seeds() -> None:
    config = dict(rate=500.0, max_events=3000, world_seed=7)
    history, first = run(seed=11, users=2000, **config)
    live, second = run(seed=8, users=500, **config)
    assert history.catalog() == live.catalog()
    assert Simulator(SimulationConfig(seed=7)).catalog() == live.catalog()  # the default: seed
    assert history.world.users[:500] == live.world.users
    first_ids = {r.get("envelope", r)["event_id"] for _, r in first}
    assert first_ids.isdisjoint(r.get("envelope", r)["event_id"] for _, r in second)
    assert Simulator(SimulationConfig(seed=8)).catalog() != live.catalog()


def test_event_times_never_decrease_and_the_duration_bound_holds() -> None:
    sim, events = run(seed=3, rate=1500.0, duration_s=20.0)
    times = [event_time(r) for _, r in events]
    assert times == sorted(times)
    assert sim.config.start_ms <= times[0]
    assert times[-1] < sim.config.start_ms + 20_000
    assert sim.truth.total_events == len(events)
    assert sim.truth.last_event_ms == times[-1]


def test_max_events_bounds_the_run_before_the_duration() -> None:
    sim, events = run(seed=3, duration_s=3600.0, max_events=1234)
    assert len(events) == 1234 == sim.truth.total_events
    assert Counter(t for t, _ in events) == Counter(sim.truth.counts)


def test_without_bounds_the_stream_is_endless() -> None:
    sim = Simulator(SimulationConfig(seed=4, rate=500.0, duration_s=None, max_events=None))
    taken = list(itertools.islice(sim.events(), 30_000))
    assert len(taken) == 30_000 == sim.truth.total_events
    assert event_time(taken[-1][1]) - sim.config.start_ms > 50_000  # beyond a minute of 500/s


@pytest.mark.parametrize("rate", [300.0, 3000.0])
def test_overall_rate_is_near_the_target(rate: float) -> None:
    _, events = run(seed=8, rate=rate, duration_s=20.0)
    assert len(events) / 20.0 == pytest.approx(rate, rel=0.15)


# -- one larger run for the behavioural checks ----------------------------------------------


@dataclass
class Traffic:
    """A compact summary of one run, for the behavioural checks."""

    truth: GroundTruth
    starts: list[dict[str, Any]] = field(default_factory=list)
    stops: dict[str, dict[str, Any]] = field(default_factory=dict)
    logins: list[dict[str, Any]] = field(default_factory=list)
    ratings: list[tuple[str, str, float]] = field(default_factory=list)
    cdn: list[tuple[int, str, int]] = field(default_factory=list)
    beats: list[tuple[int, str, int, int]] = field(default_factory=list)

    def add(self, event_type: str, r: dict[str, Any]) -> None:
        env = r.get("envelope", {})
        if event_type == "playback_start":
            self.starts.append(
                {
                    "t": env["event_time"],
                    "session": env["session_id"],
                    "user": env["user_id"],
                    "title": r["title_id"],
                    "edge": r["cdn_edge"],
                    "device_type": env["device"]["device_type"],
                    "success": r["success"],
                    "start": r["start_position_ms"],
                }
            )
        elif event_type == "playback_stop":
            self.stops[env["session_id"]] = {"position": r["position_ms"], "reason": r["reason"]}
        elif event_type == "login":
            self.logins.append(
                {
                    "t": env["event_time"],
                    "success": r["success"],
                    "ip": env["client_ip"],
                    "user": env["user_id"],
                }
            )
        elif event_type == "rating":
            self.ratings.append((env["user_id"], r["title_id"], r["rating"]))
        elif event_type == "cdn_request":
            self.cdn.append((r["event_time"], r["edge_id"], r["http_status"]))
        elif event_type == "playback_heartbeat":
            self.beats.append((env["event_time"], r["cdn_edge"], r["rebuffer_ms"], r["interval_ms"]))

    def incident(self, kind: str) -> dict[str, Any]:
        return self.truth.incidents_of(kind)[0]


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    incidents = [
        Incident("edge_outage", 30, 25),
        Incident("login_attack", 65, 25),
        Incident("play_failure_spike", 100, 25),
    ]
    sim = Simulator(
        SimulationConfig(seed=11, rate=1500.0, duration_s=150.0, heartbeat_cap=6, incidents=incidents)
    )
    summary = Traffic(sim.truth)
    for event_type, record in sim.events():
        summary.add(event_type, record)
    return summary


def inside(t: int, incident: dict[str, Any]) -> bool:
    return incident["start_ms"] <= t < incident["end_ms"]


def failure_rate(starts: list[dict[str, Any]]) -> float:
    assert len(starts) >= 100, "too few play attempts to measure a failure rate"
    return sum(not s["success"] for s in starts) / len(starts)


def test_play_failures_are_at_the_base_rate_outside_incidents(traffic: Traffic) -> None:
    quiet = [s for s in traffic.starts if not any(inside(s["t"], i) for i in traffic.truth.incidents)]
    base = traffic.truth.rates["play_failure_rate"]
    assert failure_rate(quiet) == pytest.approx(base, abs=0.01)


def test_edge_outage_fails_plays_and_requests_on_its_edge(traffic: Traffic) -> None:
    outage, model = traffic.incident("edge_outage"), traffic.truth.behaviour()
    edge = outage["target"]
    during = [s for s in traffic.starts if s["edge"] == edge and inside(s["t"], outage)]
    others = [s for s in traffic.starts if s["edge"] != edge and inside(s["t"], outage)]
    assert failure_rate(during) == pytest.approx(model.outage_play_failure_rate, abs=0.1)
    assert failure_rate(during) > 5 * traffic.truth.rates["play_failure_rate"]
    assert failure_rate(others) < 2 * traffic.truth.rates["play_failure_rate"]

    def errors(window: bool) -> float:
        statuses = [s for t, e, s in traffic.cdn if e == edge and inside(t, outage) == window]
        return sum(s >= 500 for s in statuses) / len(statuses)

    assert errors(True) == pytest.approx(model.outage_http_5xx_rate, abs=0.1)
    assert errors(False) < 0.02

    def rebuffer_ratio(window: bool) -> float:
        beats = [(r, i) for t, e, r, i in traffic.beats if e == edge and inside(t, outage) == window]
        return sum(r for r, _ in beats) / sum(i for _, i in beats)

    assert rebuffer_ratio(True) > 3 * rebuffer_ratio(False)


def test_login_attack_is_a_burst_of_failures_from_few_ips(traffic: Traffic) -> None:
    attack = traffic.incident("login_attack")
    length = attack["end_ms"] - attack["start_ms"]
    before = {**attack, "start_ms": attack["start_ms"] - length, "end_ms": attack["start_ms"]}
    ips = set(attack["details"]["source_ips"])
    failed_during = [x for x in traffic.logins if not x["success"] and inside(x["t"], attack)]
    failed_before = [x for x in traffic.logins if not x["success"] and inside(x["t"], before)]
    assert len(failed_during) > 5 * len(failed_before)
    from_attack = [x for x in failed_during if x["ip"] in ips]
    assert len(from_attack) / len(failed_during) > 0.8
    assert {x["ip"] for x in from_attack} == ips
    assert len({x["user"] for x in from_attack}) > 10 * len(ips)
    assert not any(x["ip"] in ips for x in traffic.logins if not inside(x["t"], attack))
    attempts = [x for x in traffic.logins if x["ip"] in ips]
    assert len(attempts) == attack["details"]["attempts"]
    assert sorted(x["user"] for x in attempts if x["success"]) == sorted(
        attack["details"]["compromised_users"]
    )


def test_play_failure_spike_hits_its_target_only(traffic: Traffic) -> None:
    spike, model = traffic.incident("play_failure_spike"), traffic.truth.behaviour()
    assert spike["target_type"] == "device_type"
    window = [s for s in traffic.starts if inside(s["t"], spike)]
    hit = [s for s in window if s["device_type"] == spike["target"]]
    spared = [s for s in window if s["device_type"] != spike["target"]]
    assert failure_rate(hit) == pytest.approx(model.spike_play_failure_rate, abs=0.08)
    assert failure_rate(spared) < 2 * traffic.truth.rates["play_failure_rate"]


def finished(traffic: Traffic) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Successful plays that ended with a stop that was not an error."""
    return [
        (s, traffic.stops[s["session"]])
        for s in traffic.starts
        if s["success"] and s["session"] in traffic.stops and traffic.stops[s["session"]]["reason"] != "ERROR"
    ]


def test_completion_rises_with_taste_affinity_as_modelled(traffic: Traffic) -> None:
    truth, model = traffic.truth, traffic.truth.behaviour()
    by_band: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for start, stop in finished(traffic):
        a = truth.affinity(start["user"], start["title"])
        band = "high" if a >= 0.6 else "low" if a <= 0.25 else "mid"
        by_band[band].append((a, stop["reason"] == "COMPLETED"))
    observed = {b: statistics.mean(done for _, done in v) for b, v in by_band.items()}
    expected = {b: statistics.mean(model.completion_probability(a) for a, _ in v) for b, v in by_band.items()}
    assert min(len(by_band["high"]), len(by_band["low"])) > 500
    assert observed["high"] > observed["low"] + 0.2
    for band in ("high", "low"):
        assert observed[band] == pytest.approx(expected[band], abs=0.05)


def test_ratings_rise_with_taste_affinity(traffic: Traffic) -> None:
    truth, model = traffic.truth, traffic.truth.behaviour()
    high, low = [], []
    for user, title, stars in traffic.ratings:
        a = truth.affinity(user, title)
        if a >= 0.6:
            high.append((a, stars))
        elif a <= 0.25:
            low.append((a, stars))
    assert min(len(high), len(low)) > 100
    spread = statistics.mean(model.rating_mean(a) for a, _ in high) - statistics.mean(
        model.rating_mean(a) for a, _ in low
    )
    observed = statistics.mean(s for _, s in high) - statistics.mean(s for _, s in low)
    assert observed > 0.7 * spread > 0
    assert statistics.mean(s for _, s in low) == pytest.approx(
        statistics.mean(model.rating_mean(a) for a, _ in low), abs=0.3
    )


def test_app_killed_sessions_end_without_a_stop(traffic: Traffic) -> None:
    truth = traffic.truth
    # sessions span about heartbeat_cap x 10 s plus pauses: those of the first 40 s have ended
    early = [s for s in traffic.starts if s["success"] and s["t"] < truth.start_ms + 40_000]
    without_stop = sum(s["session"] not in traffic.stops for s in early) / len(early)
    sessions = truth.sessions
    recorded = sessions["killed"] / (sessions["started"] - sessions["play_failures"])
    assert recorded == pytest.approx(truth.rates["app_kill_rate"], abs=0.01)
    assert without_stop == pytest.approx(recorded, abs=0.015)


# -- experiments ----------------------------------------------------------------------------


def test_treatment_watch_time_reflects_the_true_effect() -> None:
    # One heartbeat per session keeps this run small while giving ~10k sessions per arm;
    # many users keep any one heavy viewer from tilting an arm.
    sim = Simulator(SimulationConfig(seed=21, users=5000, rate=2000.0, duration_s=90.0, heartbeat_cap=1))
    starts: dict[str, tuple[str, str, int]] = {}
    watched: list[tuple[str, str, int]] = []
    exposures: dict[tuple[str, str], str] = {}
    for event_type, r in sim.events():
        env = r.get("envelope", {})
        if event_type == "playback_start" and r["success"]:
            starts[env["session_id"]] = (env["user_id"], r["title_id"], r["start_position_ms"])
        elif event_type == "playback_stop" and r["reason"] != "ERROR" and env["session_id"] in starts:
            user, title, start = starts[env["session_id"]]
            watched.append((user, title, r["position_ms"] - start))
        elif event_type == "experiment_exposure":
            key = (r["experiment_id"], env["user_id"])
            assert key not in exposures, "exposure is logged once per user and experiment"
            exposures[key] = r["variant"]
    truth = sim.truth
    for (experiment_id, user), variant in exposures.items():
        assert variant == truth.variant(experiment_id, user)
    for experiment in truth.experiments:
        raw = arm_effect(truth, experiment["experiment_id"], watched, normalized=False)
        adjusted = arm_effect(truth, experiment["experiment_id"], watched, normalized=True)
        assert raw == pytest.approx(experiment["true_effect"], abs=0.04)
        assert adjusted == pytest.approx(experiment["true_effect"], abs=0.02)


def arm_effect(
    truth: GroundTruth, experiment_id: str, watched: list[tuple[str, str, int]], normalized: bool
) -> float:
    """Relative difference of mean watch time, treatment over control. ``normalized``
    divides each session by the watch time the model expects for its user and title
    (from the recorded tastes), removing the spread due to taste and running time."""
    model = truth.behaviour()
    arms: dict[str, list[float]] = defaultdict(list)
    for user, title, ms in watched:
        expected = (
            model.watch_fraction_median(truth.affinity(user, title)) * truth.titles[title]["duration_s"]
            if normalized
            else 1.0
        )
        arms[truth.variant(experiment_id, user)].append(ms / expected)
    assert min(len(v) for v in arms.values()) > 8000
    return statistics.mean(arms["treatment"]) / statistics.mean(arms["control"]) - 1


def test_allocation_is_a_deterministic_even_split() -> None:
    truth = Simulator(SimulationConfig(seed=1, users=4000)).truth
    for experiment in truth.experiments:
        shares = Counter(experiment["assignment"].values())
        assert set(shares) == {"control", "treatment"}
        assert shares["treatment"] / 4000 == pytest.approx(0.5, abs=0.03)
    again = Simulator(SimulationConfig(seed=2, users=4000)).truth
    assert again.experiments[0]["assignment"] == truth.experiments[0]["assignment"]


# -- session consistency, truth, config -----------------------------------------------------


def test_heartbeat_positions_agree_with_intervals() -> None:
    sim, events = run(seed=9, rate=1000.0, duration_s=40.0)
    by_session: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for event_type, r in events:
        if event_type.startswith("playback_"):
            by_session[r["envelope"]["session_id"]].append((event_type, r))
    checked = 0
    for session in by_session.values():
        kinds = [t for t, _ in session]
        if kinds[0] != "playback_start" or "playback_seek" in kinds:
            continue
        position, paused = session[0][1]["start_position_ms"], 0
        for event_type, r in session[1:]:
            if event_type == "playback_resume":
                paused += r["paused_ms"]
            elif event_type == "playback_heartbeat":
                advance = r["interval_ms"] - r["rebuffer_ms"] - paused
                assert r["position_ms"] - position == advance
                position, paused, checked = r["position_ms"], 0, checked + 1
            elif event_type == "playback_stop":
                assert r["position_ms"] == position
                duration_ms = sim.truth.titles[r["title_id"]]["duration_s"] * 1000  # whole seconds
                assert (r["reason"] == "COMPLETED") == (position >= duration_ms)
    assert checked > 1000


def test_ground_truth_round_trips_through_json(tmp_path: Path) -> None:
    sim, _ = run(
        seed=12, max_events=2000, incidents=[Incident("login_attack", 0, 1), Incident("edge_outage", 0, 1)]
    )
    path = tmp_path / "truth.json"
    sim.truth.to_json(path)
    loaded = GroundTruth.from_json(path)
    assert loaded == sim.truth
    assert loaded.counts
    assert loaded.sessions["started"] > 0
    assert loaded.rates
    user, title = next(iter(loaded.users)), next(iter(loaded.titles))
    assert loaded.affinity(user, title) == sim.truth.affinity(user, title)
    tastes = loaded.users[user]["tastes"]
    assert set(tastes) == set(loaded.genres)
    assert sum(tastes.values()) == pytest.approx(1.0)


def test_incident_targets_are_deterministic_and_can_be_chosen() -> None:
    incidents = [
        Incident("edge_outage", 1, 1),
        Incident("play_failure_spike", 1, 1),
        Incident("play_failure_spike", 1, 1, target="country=BR"),
        Incident("login_attack", 1, 1, target="203.0.113.9, 203.0.113.10"),
    ]
    first = Simulator(SimulationConfig(seed=3, incidents=incidents)).truth.incidents
    assert first == Simulator(SimulationConfig(seed=3, incidents=incidents)).truth.incidents
    assert first[0]["target"] in Simulator(SimulationConfig(seed=3)).truth.edges
    assert (first[2]["target_type"], first[2]["target"]) == ("country", "BR")
    assert first[3]["details"]["source_ips"] == ["203.0.113.9", "203.0.113.10"]
    with pytest.raises(ValueError, match="edge-nowhere-01"):
        Simulator(SimulationConfig(incidents=[Incident("edge_outage", 0, 1, "edge-nowhere-01")]))


@pytest.mark.parametrize(
    ("field_name", "value"), [("rate", 0.0), ("users", 0), ("app_kill_rate", 1.5), ("duration_s", -1.0)]
)
def test_config_rejects_impossible_values(field_name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field_name):
        SimulationConfig(**{field_name: value})
