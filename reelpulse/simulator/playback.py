"""Playback sessions: a plan drawn at the play press, then the session's events in time order.

A plan fixes the title, edge, outcome and the stretch of the title that will be watched
(its start and end position). Events follow it: ``playback_start``; for a failed start a
fatal ``playback_error`` and a ``playback_stop`` (ERROR); otherwise heartbeats every 10 s
of event time with optional ``cdn_request``, ``bitrate_switch``, ``playback_error``,
``playback_pause``/``playback_resume`` and ``playback_seek``, then ``playback_stop`` (not
when the app is killed) and sometimes a ``rating``.

Time compression: a session with more than ``heartbeat_cap`` heartbeats of content is
played with ``heartbeat_cap`` heartbeats that stay 10 s apart in event time but each cover
``c`` times as much (``c`` = content / (cap x 10 s)). Within every heartbeat
``position delta = interval_ms - rebuffer_ms - paused time``, so positions and intervals
always agree; pauses and startup are real event time.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from reelpulse.simulator.model import HEARTBEAT_MS, affinity, poisson, stars
from reelpulse.simulator.records import Who
from reelpulse.simulator.run import Item, Run
from reelpulse.simulator.world import Device, Edge, Title, User

STARTUP_MS = {"TV": 1400, "MOBILE": 800, "WEB": 1000, "TABLET": 900, "STREAMING_STICK": 1600, "CONSOLE": 1200}
NONFATAL_CODES = ("NW-2-5", "DRM-LICENSE-RENEW", "DEC-3-1", "NW-1-7")
FATAL_CODES = ("NW-4-2", "DRM-LICENSE", "MEDIA-5-1")
START_FAILURE_CODES = ("CDN-503", "NW-3-1", "DRM-LICENSE", "MANIFEST-404")
CACHE = ((0.85, "HIT", 20), (0.96, "MISS", 90), (0.99, "STALE", 40), (1.0, "BYPASS", 110))


@dataclass(slots=True)
class Plan:
    """Everything decided when play is pressed."""

    who: Who
    app_who: Who
    title: Title
    edge: Edge
    start_ms: int
    start_pos: int
    end_pos: int
    success: bool
    startup_ms: int
    killed: bool
    rating: float | None
    exposures: list[int]


def plan_session(
    run: Run,
    t: int,
    user: User | None = None,
    device: Device | None = None,
    title: Title | None = None,
    in_run: bool = True,
) -> Plan:
    """Draw a session starting at ``t``. ``in_run`` False: a session already running when the
    run starts (no experiment exposure or effect, not counted as started)."""
    rng, model, config = run.rng, run.model, run.config
    user = user or run.pick_user()
    device = device or run.pick_device(user)
    title = title or run.pick_title(user)
    a = affinity(user.taste, title.genres)
    app_who = run.who(user, device)
    exposures = run.expose(user, "playback") if in_run else []
    start_pos, end_pos = watch_extent(run, title, a, run.effect(user) if in_run else 1.0)
    edge = run.pick_edge(user.country)
    failure = run.schedule.play_failure_rate(
        config.play_failure_rate, edge, device.device_type, user.country, t
    )
    success = rng.random() >= failure
    startup = startup_ms(run, device, run.schedule.health(edge, t), success)
    killed = success and rng.random() < config.app_kill_rate
    rated = success and rng.random() < model.rating_probability
    rating = stars(model.rating_mean(a) + rng.gauss(0.0, model.rating_sigma)) if rated else None
    who = Who(user, app_who.profile_id, run.uuid(), device, user.country, device.ip)
    if in_run:
        _count(run, success, killed)
    return Plan(who, app_who, title, edge, t, start_pos, end_pos, success, startup, killed, rating, exposures)


def watch_extent(run: Run, title: Title, a: float, multiplier: float) -> tuple[int, int]:
    """``(start, end)`` position of what will be watched. The watched length is a log-normal
    share of the running time (times the experiment multiplier); a completed session ends
    at the end of the title, others start at 0 or at a resume point and stop before it."""
    rng, model, duration = run.rng, run.model, title.duration_ms
    share = model.watch_fraction_median(a) * rng.lognormvariate(0.0, model.watch_fraction_sigma)
    share *= multiplier
    if rng.random() < model.completion_probability(a):
        watched = max(1000, int(min(share, 1.0) * duration))
        return duration - watched, duration
    watched = max(1000, int(min(share, 0.95) * duration))
    start = 0 if rng.random() < 0.7 else int(rng.random() * (duration - watched))
    return start, start + watched


def startup_ms(run: Run, device: Device, health: float, success: bool) -> int:
    if not success:
        return 3000 + int(run.rng.random() * 12000)
    return int(STARTUP_MS[device.device_type] * run.rng.lognormvariate(0.0, 0.35) / health)


def _count(run: Run, success: bool, killed: bool) -> None:
    sessions = run.truth.sessions
    sessions["started"] += 1
    sessions["play_failures"] += not success
    sessions["killed"] += killed


class Playback:
    """The events of one planned session."""

    __slots__ = ("cdn_rate", "model", "plan", "rng", "run", "rung", "top")

    def __init__(self, run: Run, plan: Plan) -> None:
        self.run, self.plan, self.rng, self.model = run, plan, run.rng, run.model
        self.cdn_rate = run.config.cdn_sample_rate
        self.top = min(len(plan.title.ladder), plan.who.device.max_rung + 1) - 1
        healthy = run.schedule.health(plan.edge, plan.start_ms) > 0.8
        self.rung = min(self.top, 2 if healthy else 1)

    def events(self, skip_until: float = -math.inf) -> Iterator[Item]:
        """The session's events; those before ``skip_until`` are played but not built."""
        plan, t = self.plan, self.plan.start_ms
        if t >= skip_until:
            yield from self._opening(t)
        t += plan.startup_ms
        if not plan.success:
            if t >= skip_until:
                yield from self._failed(t)
            return
        t, position, fatal = yield from self._play(t, skip_until)
        if not plan.killed:
            yield from self._closing(t, position, fatal, skip_until)

    def _opening(self, t: int) -> Iterator[Item]:
        plan = self.plan
        for i in plan.exposures:
            yield self.run.exposure(t, plan.app_who, i)
        yield (
            t,
            "playback_start",
            {
                "envelope": plan.who.envelope(self.rng, t),
                "title_id": plan.title.title_id,
                "rendition_ladder": plan.title.ladder_record(),
                "initial_bitrate_kbps": plan.title.ladder[self.rung][0],
                "cdn_edge": plan.edge.edge_id,
                "startup_time_ms": plan.startup_ms,
                "success": plan.success,
                "start_position_ms": plan.start_pos,
            },
        )
        if self.rng.random() < self.cdn_rate:
            yield t, "cdn_request", self._cdn(t, self.run.schedule.health(plan.edge, t))

    def _failed(self, t: int) -> Iterator[Item]:
        code = START_FAILURE_CODES[int(self.rng.random() * len(START_FAILURE_CODES))]
        yield t, "playback_error", self._error(t, self.plan.start_pos, code, True)
        yield t, "playback_stop", self._stop(t, self.plan.start_pos, "ERROR")

    def _play(self, t: int, skip: float) -> Generator[Item, None, tuple[int, int, bool]]:
        """Heartbeats until the planned end position; returns (time, position, fatal)."""
        plan, rng, model, schedule = self.plan, self.rng, self.model, self.run.schedule
        position, end = plan.start_pos, plan.end_pos
        c = max(1.0, (end - position) / (self.run.config.heartbeat_cap * HEARTBEAT_MS))
        budget, paused = int(HEARTBEAT_MS * c), 0
        while position < end:
            health = schedule.health(plan.edge, t + HEARTBEAT_MS + paused)  # at the beat
            stalls, stalled = self._stalls(health, budget)
            content = min(budget - stalled, end - position)
            t += round((content + stalled) / c) + paused
            position += content
            if t >= skip:
                yield (
                    t,
                    "playback_heartbeat",
                    self._heartbeat(t, position, content + stalled + paused, stalls, stalled, health, c),
                )
                yield from self._extras(t, position, stalls, health)
            else:
                self._adapt(stalls, health)
            paused = 0
            if rng.random() < model.fatal_error_rate / (health * health):
                if t >= skip:
                    yield t, "playback_error", self._error(t, position, self._code(FATAL_CODES), True)
                return t, position, True
            if end - position > 2 * budget:
                paused, position = yield from self._interrupt(t, position, c, budget, skip)
        return t, position, False

    def _stalls(self, health: float, budget: int) -> tuple[int, int]:
        count = poisson(self.rng, self.model.stalls_expected(health, budget))
        if not count:
            return 0, 0
        mean = 1200.0 / health
        stalled = sum(int(self.rng.expovariate(1.0) * mean) + 100 for _ in range(count))
        return count, min(stalled, int(budget * 0.6))

    def _extras(self, t: int, position: int, stalls: int, health: float) -> Iterator[Item]:
        rng = self.rng
        if rng.random() < self.cdn_rate:
            yield t, "cdn_request", self._cdn(t, health)
        switch = self._adapt(stalls, health)
        if switch is not None:
            yield t, "bitrate_switch", self._switch(t, position, switch)
        if rng.random() < self.model.nonfatal_error_rate / health:
            yield t, "playback_error", self._error(t, position, self._code(NONFATAL_CODES), False)

    def _adapt(self, stalls: int, health: float) -> int | None:
        """Adaptive bitrate: step down after stalls, up while healthy. Returns the old rung."""
        old, r = self.rung, self.rng.random()
        if stalls and old > 0 and r < 0.7:
            self.rung = max(0, old - (2 if health < 0.5 else 1))
        elif not stalls and old < self.top and r < 0.2 * health:
            self.rung = old + 1
        return old if self.rung != old else None

    def _interrupt(
        self, t: int, position: int, c: float, budget: int, skip: float
    ) -> Generator[Item, None, tuple[int, int]]:
        """Maybe a pause (returns its length) or a seek (returns the new position)."""
        r, model = self.rng.random(), self.model
        if r < model.pause_rate:
            paused = yield from self._pause(t, position, c, skip)
            return paused, position
        if r < model.pause_rate + model.seek_rate:
            target = yield from self._seek(t, position, budget, skip)
            return 0, target
        return 0, position

    def _pause(self, t: int, position: int, c: float, skip: float) -> Generator[Item, None, int]:
        rng, plan = self.rng, self.plan
        after = 200 + int(rng.random() * 2800)
        paused = min(120_000, 2000 + int(rng.expovariate(1.0) * 8000))
        at, where = t + after, position + int(after * c)
        title_id = plan.title.title_id
        if at >= skip:
            yield (
                at,
                "playback_pause",
                {"envelope": plan.who.envelope(rng, at), "title_id": title_id, "position_ms": where},
            )
        if at + paused >= skip:
            yield (
                at + paused,
                "playback_resume",
                {
                    "envelope": plan.who.envelope(rng, at + paused),
                    "title_id": title_id,
                    "position_ms": where,
                    "paused_ms": paused,
                },
            )
        return paused

    def _seek(self, t: int, position: int, budget: int, skip: float) -> Generator[Item, None, int]:
        rng, plan = self.rng, self.plan
        if rng.random() < 0.7:
            target = min(plan.end_pos - budget, position + 10_000 + int(rng.random() * 80_000))
        else:
            target = max(plan.start_pos, position - 5000 - int(rng.random() * 25_000))
        if t >= skip:
            yield (
                t,
                "playback_seek",
                {
                    "envelope": plan.who.envelope(rng, t),
                    "title_id": plan.title.title_id,
                    "from_position_ms": position,
                    "to_position_ms": target,
                },
            )
        return target

    def _closing(self, t: int, position: int, fatal: bool, skip: float) -> Iterator[Item]:
        plan, rng = self.plan, self.rng
        if t >= skip:
            yield t, "playback_stop", self._stop(t, position, self._reason(position, fatal))
        if plan.rating is not None:
            at = t + 2000 + int(rng.random() * 28_000)
            if at >= skip:
                yield (
                    at,
                    "rating",
                    {
                        "envelope": plan.app_who.envelope(rng, at),
                        "title_id": plan.title.title_id,
                        "rating": plan.rating,
                        "source": "APP",
                    },
                )

    def _reason(self, position: int, fatal: bool) -> str:
        if fatal:
            return "ERROR"
        if position >= self.plan.title.duration_ms:
            return "COMPLETED"
        portable = self.plan.who.device.device_type in ("MOBILE", "TABLET")
        return "APP_BACKGROUNDED" if portable and self.rng.random() < 0.3 else "USER_EXIT"

    def _code(self, codes: tuple[str, ...]) -> str:
        return codes[int(self.rng.random() * len(codes))]

    def _heartbeat(
        self, t: int, position: int, interval: int, stalls: int, stalled: int, health: float, c: float
    ) -> dict[str, Any]:
        plan, rng = self.plan, self.rng
        kbps, resolution = plan.title.ladder[self.rung]
        buffer = int(rng.random() * 4000) if stalls else int((12_000 + rng.random() * 18_000) * health)
        return {
            "envelope": plan.who.envelope(rng, t),
            "title_id": plan.title.title_id,
            "position_ms": position,
            "interval_ms": interval,
            "bitrate_kbps": kbps,
            "resolution": resolution,
            "buffer_ms": buffer,
            "rebuffer_count": stalls,
            "rebuffer_ms": stalled,
            "dropped_frames": int(rng.expovariate(1.0) * 3 * c / health),
            "cdn_edge": plan.edge.edge_id,
        }

    def _switch(self, t: int, position: int, old: int) -> dict[str, Any]:
        plan = self.plan
        return {
            "envelope": plan.who.envelope(self.rng, t),
            "title_id": plan.title.title_id,
            "position_ms": position,
            "from_bitrate_kbps": plan.title.ladder[old][0],
            "to_bitrate_kbps": plan.title.ladder[self.rung][0],
            "to_resolution": plan.title.ladder[self.rung][1],
            "cdn_edge": plan.edge.edge_id,
        }

    def _error(self, t: int, position: int, code: str, fatal: bool) -> dict[str, Any]:
        plan = self.plan
        return {
            "envelope": plan.who.envelope(self.rng, t),
            "title_id": plan.title.title_id,
            "position_ms": position,
            "error_code": code,
            "fatal": fatal,
            "cdn_edge": plan.edge.edge_id,
        }

    def _stop(self, t: int, position: int, reason: str) -> dict[str, Any]:
        plan = self.plan
        return {
            "envelope": plan.who.envelope(self.rng, t),
            "title_id": plan.title.title_id,
            "position_ms": position,
            "reason": reason,
        }

    def _cdn(self, t: int, health: float) -> dict[str, Any]:
        """A sampled edge access-log line for a segment of this session."""
        rng, plan, model = self.rng, self.plan, self.model
        r = rng.random()
        cache, base = next((name, ms) for bound, name, ms in CACHE if r < bound)
        outage = health <= model.outage_health
        failed = rng.random() < (model.outage_http_5xx_rate if outage else model.base_http_5xx_rate)
        kbps = plan.title.ladder[self.rung][0]
        return {
            "event_id": self.run.uuid(),
            "event_time": t,
            "edge_id": plan.edge.edge_id,
            "pop": plan.edge.pop,
            "cache_status": cache,
            "bytes_sent": int(rng.random() * 512) if failed else int(kbps * 500 * (0.8 + rng.random() * 0.4)),
            "http_status": (502, 503, 504)[int(rng.random() * 3)] if failed else 200,
            "latency_ms": 500 + int(rng.random() * 4500)
            if failed
            else int(base * rng.lognormvariate(0.0, 0.5) / health),
            "client_region": plan.who.country,
            "client_ip": plan.who.ip,
            "session_id": plan.who.session_id,
            "title_id": plan.title.title_id,
        }
