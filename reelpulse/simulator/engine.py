"""The simulator: calibrates arrival rates to the target event rate, starts every source and
merges their time-ordered items into one stream on a virtual clock (it never sleeps)."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from reelpulse.simulator import activity
from reelpulse.simulator.config import SimulationConfig
from reelpulse.simulator.incidents import Schedule
from reelpulse.simulator.model import HEARTBEAT_MS, Model, poisson
from reelpulse.simulator.playback import Plan, Playback, plan_session
from reelpulse.simulator.run import Run, Source
from reelpulse.simulator.truth import GroundTruth
from reelpulse.simulator.world import World, build_world

PILOT_SESSIONS = 400
PILOT_OFFSET_MS = 30 * 24 * 3600 * 1000  # pilot sessions run long before any incident

Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Rates:
    """Arrival rates (per second of virtual time) that make the mix land near ``rate``."""

    login_per_s: float
    search_per_s: float
    play_per_s: float
    search_play_per_s: float
    events_per_session: float
    session_span_ms: int


class Simulator:
    """Seeded, deterministic platform traffic with ground truth.

    ``events()`` yields ``(event_type, record)`` in non-decreasing ``event_time``; every
    call replays the same sequence from the start and resets the counters of ``truth``.
    """

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.model = Model()
        self.world: World = build_world(config)
        self.schedule = Schedule(config, self.world, self.model)
        self.truth = GroundTruth.build(config, self.world, self.schedule, self.model)
        self.truth.reset_counters()
        self.rates = calibrate(config, self.world, self.schedule, self.model, self.truth)
        self.truth.rates = rates_truth(config, self.rates)

    def catalog(self) -> list[dict[str, Any]]:
        """One ``title`` record per catalog title, published at the run start."""
        return [t.record(self.config.start_ms) for t in self.world.titles]

    def events(self) -> Iterator[Event]:
        """The event stream, bounded by ``duration_s`` and ``max_events`` (endless if both
        are None)."""
        self.truth.reset_counters()
        self.schedule.reset()
        run = Run(self.config, self.world, self.schedule, self.model, self.truth)
        limit = -1 if self.config.max_events is None else self.config.max_events
        return merge(sources(run, self.rates), self.config.end_ms, limit, self.truth)


def merge(initial: Iterable[Source], end_ms: float, limit: int, truth: GroundTruth) -> Iterator[Event]:
    """Merge sources by event time (ties in a fixed order), starting sources they spawn."""
    heap: list[tuple[int, int, str | None, Any, Source]] = []
    seq = itertools.count()
    for source in initial:
        _push(heap, seq, source)
    counts, emitted = truth.counts, 0
    while heap and emitted != limit:
        t, _, event_type, payload, source = heap[0]
        if t >= end_ms:
            return
        item = next(source, None)
        if item is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (item[0], next(seq), item[1], item[2], source))
        if event_type is None:
            _push(heap, seq, payload)
            continue
        counts[event_type] = counts.get(event_type, 0) + 1
        truth.last_event_ms = t
        emitted += 1
        yield event_type, payload


def _push(heap: list[Any], seq: Iterator[int], source: Source) -> None:
    item = next(source, None)
    if item is not None:
        heapq.heappush(heap, (item[0], next(seq), item[1], item[2], source))


def sources(run: Run, rates: Rates) -> list[Source]:
    """Arrival processes, incident sources and (with ``warm_start``) the sessions already
    running when the run starts, so the rate is steady from the first second."""
    t0 = run.config.start_ms
    found: list[Source] = [
        arrivals(run, t0, rates.play_per_s, lambda t: Playback(run, plan_session(run, t)).events()),
        arrivals(run, t0, rates.login_per_s, lambda t: activity.app_session(run, t)),
        arrivals(run, t0, rates.search_per_s, lambda t: activity.search(run, t)),
    ]
    found += [activity.login_attack(run, attack) for attack in run.schedule.attacks]
    if run.config.warm_start:
        found += warm_playbacks(run, t0, rates.play_per_s + rates.search_play_per_s, rates.session_span_ms)
        found.append(activity.warm_logouts(run, t0, rates.login_per_s))
    return found


def arrivals(run: Run, t0: int, per_s: float, start: Callable[[int], Source]) -> Source:
    """A Poisson process: at each arrival, a new source starts."""
    if per_s <= 0:
        return
    rng, mean_gap, t = run.rng, 1000.0 / per_s, float(t0)
    while True:
        t += rng.expovariate(1.0) * mean_gap
        yield int(t), None, start(int(t))


def warm_playbacks(run: Run, t0: int, per_s: float, span_ms: int) -> list[Source]:
    """Sessions that started in the ``span_ms`` before ``t0`` and are still running then
    (their events before ``t0`` are played without being built)."""
    rng, found = run.rng, list[Source]()
    count = poisson(rng, per_s * span_ms / 1000)
    for start in sorted(t0 - 1 - int(rng.random() * span_ms) for _ in range(count)):
        plan = plan_session(run, start, in_run=False)
        if _latest_end(run, plan) < t0:
            continue
        events = Playback(run, plan).events(skip_until=t0)
        first = next(events, None)
        if first is not None:
            run.truth.sessions["warm"] += 1
            found.append(itertools.chain((first,), events))
    return found


def _latest_end(run: Run, plan: Plan) -> int:
    """A bound on when a planned session's last event happens (but for rare long pauses)."""
    beats = min(run.config.heartbeat_cap, math.ceil((plan.end_pos - plan.start_pos) / HEARTBEAT_MS))
    return plan.start_ms + plan.startup_ms + (beats + 2) * HEARTBEAT_MS + 3 * 60_000


def calibrate(
    config: SimulationConfig, world: World, schedule: Schedule, model: Model, truth: GroundTruth
) -> Rates:
    """Split ``config.rate`` into arrival rates, measuring events per playback session on
    pilot sessions drawn from their own RNG."""
    per_session, span = pilot(config, world, schedule, model, truth)
    login = config.rate * model.auth_share_of_rate / auth_events(config, model)
    search = config.rate * model.search_share_of_rate
    search_play = search * 0.95 * model.search_click_rate * model.play_after_click_rate
    playback_budget = config.rate * (1 - model.auth_share_of_rate - model.search_share_of_rate)
    play = max(0.0, playback_budget / per_session - search_play)
    return Rates(login, search, play, search_play, per_session, span)


def pilot(
    config: SimulationConfig, world: World, schedule: Schedule, model: Model, truth: GroundTruth
) -> tuple[float, int]:
    """Mean events per playback session and the 99th percentile of a session's span."""
    run = Run(config, world, schedule, model, truth, label="pilot")
    events, spans = 0, []
    for _ in range(PILOT_SESSIONS):
        plan = plan_session(run, config.start_ms - PILOT_OFFSET_MS, in_run=False)
        times = [item[0] for item in Playback(run, plan).events()]
        events += len(times)
        spans.append(times[-1] - plan.start_ms)
    spans.sort()
    return events / PILOT_SESSIONS, spans[int(len(spans) * 0.99)]


def auth_events(config: SimulationConfig, model: Model) -> float:
    """Expected events of one application session: failed attempts, success, sign-out."""
    fail, retry = config.login_failure_rate, model.login_retry_probability
    expected, reach = 0.0, 1.0  # reach: probability of making attempt k
    for k in range(1, activity.MAX_LOGIN_ATTEMPTS + 1):
        expected += reach * (1 - fail) * 2  # this attempt succeeds: login + logout
        expected += reach * fail  # this attempt fails: one login event
        reach *= fail * (retry if k < activity.MAX_LOGIN_ATTEMPTS else 0.0)
    return expected


def rates_truth(config: SimulationConfig, rates: Rates) -> dict[str, float]:
    return {
        "play_failure_rate": config.play_failure_rate,
        "login_failure_rate": config.login_failure_rate,
        "app_kill_rate": config.app_kill_rate,
        "cdn_sample_rate": config.cdn_sample_rate,
        "target_events_per_s": config.rate,
        "login_arrivals_per_s": rates.login_per_s,
        "search_arrivals_per_s": rates.search_per_s,
        "playback_arrivals_per_s": rates.play_per_s + rates.search_play_per_s,
        "events_per_playback_session": rates.events_per_session,
    }
