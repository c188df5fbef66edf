"""What each monitor counts: the partial aggregates of one window, entity and source
partition, how partials merge, and the metrics read from a merged aggregate.

A partial belongs to exactly one source partition and remembers the highest source
offset folded into it (``offset``): replaying a record after a restart finds its offset
already included and skips it, which makes the counts exact under at-least-once
delivery (see README.md, "Guarantees").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from streams.stats import hist_add, hist_merge, percentile

SET_CAP = 1000  # distinct accounts / IPs remembered per partial; far above any threshold


class Partial:
    """Base of every partial aggregate: JSON round trip, merge and metrics."""

    monitor: ClassVar[str]
    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = -1

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partial:
        raise NotImplementedError

    def merge(self, other: Any) -> None:
        raise NotImplementedError

    METRICS: ClassVar[dict[str, Callable[[Any], float | None]]] = {}

    def metrics(self) -> dict[str, float | None]:
        return {name: compute(self) for name, compute in self.METRICS.items()}

    def metric(self, name: str) -> float | None:
        return self.METRICS[name](self)

    def samples(self, kind: str) -> int:
        return int(getattr(self, kind))


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _hist(data: dict[str, int]) -> dict[int, int]:
    return {int(k): int(v) for k, v in data.items()}


class Quality(Partial):
    """Playback quality: starts, failures, startup times of successful starts, watch and
    rebuffering time and time-weighted bitrate from heartbeats, fatal errors."""

    monitor = "playback"
    __slots__ = (
        "bitrate_ms",
        "failures",
        "fatal",
        "heartbeats",
        "rebuffer_ms",
        "starts",
        "startup",
        "watch_ms",
    )

    def __init__(self) -> None:
        super().__init__()
        self.starts = self.failures = self.heartbeats = self.fatal = 0
        self.watch_ms = self.rebuffer_ms = self.bitrate_ms = 0
        self.startup: dict[int, int] = {}

    def start(self, success: bool, startup_ms: int) -> None:
        self.starts += 1
        if success:
            hist_add(self.startup, startup_ms)
        else:
            self.failures += 1

    def heartbeat(self, interval_ms: int, rebuffer_ms: int, bitrate_kbps: int) -> None:
        self.heartbeats += 1
        self.watch_ms += interval_ms
        self.rebuffer_ms += rebuffer_ms
        self.bitrate_ms += bitrate_kbps * interval_ms

    @property
    def played(self) -> int:
        return self.starts - self.failures

    def merge(self, other: Quality) -> None:
        self.starts += other.starts
        self.failures += other.failures
        self.heartbeats += other.heartbeats
        self.fatal += other.fatal
        self.watch_ms += other.watch_ms
        self.rebuffer_ms += other.rebuffer_ms
        self.bitrate_ms += other.bitrate_ms
        hist_merge(self.startup, other.startup)

    METRICS: ClassVar[dict[str, Callable[[Any], float | None]]] = {
        "starts": lambda s: s.starts,
        "play_failure_rate": lambda s: _ratio(s.failures, s.starts),
        "startup_p50_ms": lambda s: percentile(s.startup, 0.5),
        "startup_p95_ms": lambda s: percentile(s.startup, 0.95),
        "rebuffer_ratio": lambda s: _ratio(s.rebuffer_ms, s.watch_ms),
        "avg_bitrate_kbps": lambda s: _ratio(s.bitrate_ms, s.watch_ms),
        "fatal_errors": lambda s: s.fatal,
    }

    def to_json(self) -> dict[str, Any]:
        return {
            "o": self.offset,
            "starts": self.starts,
            "failures": self.failures,
            "heartbeats": self.heartbeats,
            "fatal": self.fatal,
            "watch_ms": self.watch_ms,
            "rebuffer_ms": self.rebuffer_ms,
            "bitrate_ms": self.bitrate_ms,
            "startup": dict(self.startup),  # a copy: the value may be serialized later
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Quality:
        state = cls()
        state.offset = data["o"]
        state.starts, state.failures = data["starts"], data["failures"]
        state.heartbeats, state.fatal = data["heartbeats"], data["fatal"]
        state.watch_ms, state.rebuffer_ms = data["watch_ms"], data["rebuffer_ms"]
        state.bitrate_ms, state.startup = data["bitrate_ms"], _hist(data["startup"])
        return state


class EdgeHealth(Partial):
    """CDN edge health from sampled access logs: requests, 5xx errors, cache hits, latency."""

    monitor = "cdn"
    __slots__ = ("errors", "hits", "latency", "requests")

    def __init__(self) -> None:
        super().__init__()
        self.requests = self.errors = self.hits = 0
        self.latency: dict[int, int] = {}

    def request(self, status: int, cache_hit: bool, latency_ms: int) -> None:
        self.requests += 1
        self.errors += status >= 500
        self.hits += cache_hit
        hist_add(self.latency, latency_ms)

    def merge(self, other: EdgeHealth) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.hits += other.hits
        hist_merge(self.latency, other.latency)

    METRICS: ClassVar[dict[str, Callable[[Any], float | None]]] = {
        "requests": lambda s: s.requests,
        "error_rate": lambda s: _ratio(s.errors, s.requests),
        "latency_p95_ms": lambda s: percentile(s.latency, 0.95),
        "cache_hit_ratio": lambda s: _ratio(s.hits, s.requests),
    }

    def to_json(self) -> dict[str, Any]:
        return {
            "o": self.offset,
            "requests": self.requests,
            "errors": self.errors,
            "hits": self.hits,
            "latency": dict(self.latency),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EdgeHealth:
        state = cls()
        state.offset, state.requests = data["o"], data["requests"]
        state.errors, state.hits, state.latency = data["errors"], data["hits"], _hist(data["latency"])
        return state


class LoginActivity(Partial):
    """Sign-in attempts of one source IP or account: attempts, failures, the accounts that
    failed from it (per IP) or the IPs it was tried from (per account)."""

    monitor = "login"
    __slots__ = ("attempts", "failures", "related")

    def __init__(self) -> None:
        super().__init__()
        self.attempts = self.failures = 0
        self.related: set[str] = set()

    def attempt(self, success: bool, related: str, track_failed_only: bool) -> None:
        self.attempts += 1
        if not success:
            self.failures += 1
        if (not success or not track_failed_only) and len(self.related) < SET_CAP:
            self.related.add(related)

    def merge(self, other: LoginActivity) -> None:
        self.attempts += other.attempts
        self.failures += other.failures
        room = SET_CAP - len(self.related)
        if room > 0:
            self.related.update(list(other.related - self.related)[:room])

    METRICS: ClassVar[dict[str, Callable[[Any], float | None]]] = {
        "attempts": lambda s: s.attempts,
        "failures": lambda s: s.failures,
        "failure_rate": lambda s: _ratio(s.failures, s.attempts),
        "failed_accounts": lambda s: len(s.related),
        "source_ips": lambda s: len(s.related),
    }

    def to_json(self) -> dict[str, Any]:
        return {
            "o": self.offset,
            "attempts": self.attempts,
            "failures": self.failures,
            "related": sorted(self.related),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoginActivity:
        state = cls()
        state.offset, state.attempts, state.failures = data["o"], data["attempts"], data["failures"]
        state.related = set(data["related"])
        return state


class Starts(Partial):
    """Play attempts in one second: successful starts and failures."""

    monitor = "starts"
    __slots__ = ("failures", "starts")

    def __init__(self) -> None:
        super().__init__()
        self.starts = self.failures = 0

    def merge(self, other: Starts) -> None:
        self.starts += other.starts
        self.failures += other.failures

    METRICS: ClassVar[dict[str, Callable[[Any], float | None]]] = {
        "starts_per_s": lambda s: s.starts,
        "failures": lambda s: s.failures,
    }

    def to_json(self) -> dict[str, Any]:
        return {"o": self.offset, "starts": self.starts, "failures": self.failures}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Starts:
        state = cls()
        state.offset, state.starts, state.failures = data["o"], data["starts"], data["failures"]
        return state


class Viewers(Partial):
    """Concurrent viewers of a title in one source partition, as of ``as_of`` (event time)."""

    monitor = "viewers"
    __slots__ = ("as_of", "viewers")

    def __init__(self) -> None:
        super().__init__()
        self.viewers = 0
        self.as_of = 0

    def merge(self, other: Viewers) -> None:
        self.viewers += other.viewers
        self.as_of = max(self.as_of, other.as_of)

    METRICS: ClassVar[dict[str, Callable[[Any], float | None]]] = {"viewers": lambda s: s.viewers}

    def to_json(self) -> dict[str, Any]:
        return {"o": self.offset, "viewers": self.viewers, "as_of": self.as_of}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Viewers:
        state = cls()
        state.offset, state.viewers, state.as_of = data["o"], data["viewers"], data["as_of"]
        return state


# table name -> partial class
TABLES: dict[str, type[Partial]] = {
    "quality": Quality,
    "edges": EdgeHealth,
    "logins": LoginActivity,
    "starts": Starts,
    "viewers": Viewers,
}
MONITOR_TABLE = {"playback": "quality", "cdn": "edges", "login": "logins", "starts": "starts"}


def merged(cls: type[Partial], partials: list[Partial]) -> Partial | None:
    """One aggregate from the partials of every source partition (None if there are none)."""
    if not partials:
        return None
    total = cls()
    for partial in partials:
        total.merge(partial)
    return total


class Sessions:
    """Playback sessions on screen, per source partition and title: a session counts from
    its first event until its stop, or until ``ttl_ms`` of event time pass without an
    event (an app killed mid-play never sends a stop). Held in memory only: after a
    restart the count is rebuilt from the heartbeats within one heartbeat interval."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self.sessions: dict[str, tuple[int, str, int]] = {}  # session -> (partition, title, last seen)
        self.counts: dict[tuple[int, str], int] = {}
        self.changed: set[tuple[int, str]] = set()
        self.next_scan = 0

    def seen(self, partition: int, session: str, title: str, event_time: int, stopped: bool) -> None:
        known = self.sessions.get(session)
        if stopped:
            if known is not None:
                self._drop(session, known)
            return
        if known is None:
            key = (partition, title)
            self.counts[key] = self.counts.get(key, 0) + 1
            self.changed.add(key)
        elif event_time < known[2]:
            return
        self.sessions[session] = (partition, title, event_time)

    def expire(self, watermark: int) -> int:
        """Drop sessions silent for longer than the TTL; returns how many. Scans at most
        once per sixth of the TTL of event time (a session lingers up to that much longer)."""
        if watermark < self.next_scan:
            return 0
        self.next_scan = watermark + self.ttl_ms // 6
        cutoff = watermark - self.ttl_ms
        stale = [(s, v) for s, v in self.sessions.items() if v[2] < cutoff]
        for session, known in stale:
            self._drop(session, known)
        return len(stale)

    def _drop(self, session: str, known: tuple[int, str, int]) -> None:
        del self.sessions[session]
        key = (known[0], known[1])
        self.counts[key] -= 1
        self.changed.add(key)

    def forget_partition(self, partition: int) -> None:
        for session, known in list(self.sessions.items()):
            if known[0] == partition:
                self._drop(session, known)
