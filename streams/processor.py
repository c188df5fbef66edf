"""The monitors' state machine, independent of Faust: fold decoded events into partial
aggregates, evaluate the rules, close windows as the watermark passes them, and say
which table keys changed.

State lives in a :class:`Store` (the Faust tables in a worker, a dict in tests and the
bare-loop benchmark); everything the store holds is also cached here, loaded once when
partitions are assigned, so the hot path never reads the store.

Table keys are ``partition|entity type|entity|window start`` for the partial aggregates
(each partial belongs to one source partition, so it lives in that partition's changelog),
and ``rule|entity type|entity`` for open alerts and learned baselines (their changelog
partition is a hash of the key).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from streams import alerts
from streams.alerts import AlertState, Observation
from streams.config import METRICS, Rule, RuleBook
from streams.monitors import (
    MONITOR_TABLE,
    TABLES,
    EdgeHealth,
    LoginActivity,
    Partial,
    Quality,
    Sessions,
    Starts,
    Viewers,
)
from streams.stats import Baseline
from streams.windows import Watermark, closed_between, window_start

STATE_TABLES = ("alerts", "baselines")
# a baseline stops learning while a deviation is beyond `clear` sigmas, for at most this many
# smoothing windows: a lasting change that never becomes an alert is then the new normal
HOLD_SMOOTHINGS = 6
ALL_TABLES = (*TABLES, *STATE_TABLES)
PartialKey = tuple[int, str, str, int]  # partition, entity type, entity, window start


class Store(Protocol):
    """Where the monitors' state is kept (the seam to Faust tables)."""

    def items(self, table: str) -> Iterable[tuple[str, dict[str, Any]]]: ...

    def put(self, table: str, key: str, value: dict[str, Any], partition: int) -> None: ...

    def delete(self, table: str, key: str, partition: int) -> None: ...


class MemoryStore:
    """A :class:`Store` in a dict of dicts (tests, benchmarks)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in ALL_TABLES}
        self.partitions: dict[tuple[str, str], int] = {}

    def items(self, table: str) -> Iterable[tuple[str, dict[str, Any]]]:
        return list(self.tables[table].items())

    def put(self, table: str, key: str, value: dict[str, Any], partition: int) -> None:
        self.tables[table][key] = value
        self.partitions[(table, key)] = partition

    def delete(self, table: str, key: str, partition: int) -> None:
        self.tables[table].pop(key, None)


class Incoming(NamedTuple):
    """One decoded source record, its event time and where it came from."""

    topic: str
    partition: int
    offset: int
    event_type: str
    record: dict[str, Any]
    event_time: int


@dataclass
class Counters:
    """What the worker has done, for the metrics endpoint."""

    processed: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    late: int = 0
    fired: int = 0
    resolved: int = 0
    suppressed: int = 0
    flushed: int = 0
    batches: int = 0


def partial_key(key: PartialKey) -> str:
    return f"{key[0]}|{key[1]}|{key[2]}|{key[3]}"


def parse_partial_key(text: str) -> PartialKey:
    partition, entity_type, rest = text.split("|", 2)
    entity, window = rest.rsplit("|", 1)
    return int(partition), entity_type, entity, int(window)


def state_key(rule: str, entity_type: str, entity: str) -> str:
    return f"{rule}|{entity_type}|{entity}"


def event_time_of(record: dict[str, Any]) -> int:
    envelope = record.get("envelope")
    return int(envelope["event_time"] if envelope is not None else record["event_time"])


def wall_ms() -> int:
    return int(time.time() * 1000)


class Processor:
    """Fold events into the monitors' state and turn rule evaluations into alert records."""

    def __init__(
        self,
        book: RuleBook,
        store: Store,
        partitions: int,
        *,
        now_ms: Callable[[], int] = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book, self.store, self.partitions, self.now_ms = book, store, partitions, now_ms
        self.window_ms = book.windows.quality_ms
        self.grace_ms = book.windows.grace_ms
        self.watermark = Watermark(book.windows.idle_partition_s, monotonic)
        self.sessions = Sessions(book.windows.viewer_ttl_s * 1000)
        self.cache: dict[str, dict[PartialKey, Partial]] = {name: {} for name in TABLES}
        self.dirty: dict[str, set[Any]] = {name: set() for name in ALL_TABLES}
        self.deleted: dict[str, dict[str, int]] = {name: {} for name in ALL_TABLES}
        self.open: dict[str, AlertState] = {}  # state key -> open alert
        self.baselines: dict[str, Baseline] = {}
        self.touched: set[tuple[str, str, str, int]] = set()  # table, entity type, entity, window
        self.countries: set[str] = set()
        self.counters = Counters()
        self.batch_time = 0
        self.loaded = False
        self.window_rules: dict[tuple[str, str], list[Rule]] = {}
        for rule in book.rules:
            if not rule.uses_baseline:
                table = MONITOR_TABLE[rule.monitor]
                self.window_rules.setdefault((table, rule.entity), []).append(rule)
        self.start_rules = [r for r in book.rules if r.uses_baseline]

    # ------------------------------------------------------------------ state load / flush

    def load(self) -> None:
        """Read every table into the cache (after the store was restored)."""
        for name, cls in TABLES.items():
            self.cache[name] = {parse_partial_key(k): cls.from_json(v) for k, v in self.store.items(name)}
        self.open = {k: AlertState.from_json(v) for k, v in self.store.items("alerts")}
        self.baselines = {k: Baseline.from_json(v) for k, v in self.store.items("baselines")}
        self.countries = {k[2] for k in self.cache["starts"] if k[1] == "country"}
        self.loaded = True

    def flush(self) -> int:
        """Write every changed key to the store; returns how many were written."""
        self._viewers_to_tables()
        written = 0
        for name in TABLES:
            cache = self.cache[name]
            for key in self.dirty[name]:
                if key in cache:
                    self.store.put(name, partial_key(key), cache[key].to_json(), key[0])
                    written += 1
            self.dirty[name].clear()
        for name, states in (("alerts", self.open), ("baselines", self.baselines)):
            for key in self.dirty[name]:
                if key in states:
                    self.store.put(name, key, states[key].to_json(), self.partition_of(key))
                    written += 1
            self.dirty[name].clear()
        for name, keys in self.deleted.items():
            for key, partition in keys.items():
                self.store.delete(name, key, partition)
            keys.clear()
        self.counters.flushed += written
        return written

    def partition_of(self, key: str) -> int:
        """Changelog partition of a state key that no source partition owns."""
        return zlib.crc32(key.encode()) % self.partitions

    # ------------------------------------------------------------------ input checks

    def time_limits(self) -> tuple[int, int]:
        """``(earliest, latest)`` event time accepted now: at most ``max_past_s`` behind the
        watermark and ``max_future_s`` ahead of the wall clock."""
        limits = self.book.input
        mark = self.watermark.value
        earliest = -(2**62) if mark is None else mark - limits.max_past_s * 1000
        return earliest, self.now_ms() + limits.max_future_s * 1000

    def time_problem(self, event_time: int) -> str | None:
        """Why ``event_time`` is too far in the future or past to accept, or None."""
        earliest, latest = self.time_limits()
        if event_time > latest:
            ahead = (event_time - latest) / 1000 + self.book.input.max_future_s
            return f"event_time {event_time} is {ahead:.0f}s ahead of the wall clock"
        if event_time < earliest:
            behind = (earliest - event_time) / 1000 + self.book.input.max_past_s
            return f"event_time {event_time} is {behind:.0f}s behind the watermark"
        return None

    # ------------------------------------------------------------------ folding events

    def apply(self, batch: Iterable[Incoming]) -> list[tuple[Rule, dict[str, Any]]]:
        """Fold a batch in; returns the alert notifications it caused, in order."""
        handlers = self._handlers
        latest: dict[tuple[str, int], int] = {}
        processed = self.counters.processed
        mark, size = self.watermark.value, self.window_ms
        late_before = -1 if mark is None else window_start(mark - self.grace_ms - size, size) + size
        late = 0
        for topic, partition, offset, event_type, record, t in batch:
            if t < late_before:
                late += 1  # its window has closed: counted, but no longer evaluated
            key = (topic, partition)
            if t > latest.get(key, -1):
                latest[key] = t
            processed[event_type] = processed.get(event_type, 0) + 1
            handler = handlers.get(event_type)
            if handler is not None:
                handler(self, partition, offset, record, t)
        for (topic, partition), t in latest.items():
            self.watermark.observe(topic, partition, t)
            self.batch_time = max(self.batch_time, t)
        self.counters.batches += 1
        self.counters.late += late
        notes = self._evaluate_touched()
        old = self.watermark.value
        new = self.watermark.advance()
        if new is not None and new != old:
            notes += self._close(old, new)
        return notes

    def _partial(self, table: str, cls: type[Partial], key: PartialKey, offset: int) -> Any:
        """The partial for ``key``, or None when ``offset`` is already folded into it."""
        cache = self.cache[table]
        state = cache.get(key)
        if state is None:
            state = cache[key] = cls()
        elif offset <= state.offset:
            self.counters.duplicates += 1
            return None
        state.offset = offset
        self.dirty[table].add(key)
        self.touched.add((table, key[1], key[2], key[3]))
        return state

    def _playback_keys(self, record: dict[str, Any], t: int, partition: int) -> list[PartialKey]:
        env = record["envelope"]
        window = t - t % self.window_ms
        return [
            (partition, "title", record["title_id"], window),
            (partition, "device_type", env["device"]["device_type"], window),
            (partition, "cdn_edge", record["cdn_edge"], window),
            (partition, "country", env["country"], window),
        ]

    def _on_start(self, partition: int, offset: int, record: dict[str, Any], t: int) -> None:
        success, startup = record["success"], record["startup_time_ms"]
        for key in self._playback_keys(record, t, partition):
            state = self._partial("quality", Quality, key, offset)
            if state is not None:
                state.start(success, startup)
        second = t - t % 1000
        country = record["envelope"]["country"]
        self.countries.add(country)
        for key in ((partition, "global", "all", second), (partition, "country", country, second)):
            counts = self._partial("starts", Starts, key, offset)
            if counts is not None:
                if success:
                    counts.starts += 1
                else:
                    counts.failures += 1
        self._session(partition, record, t, stopped=not success)

    def _on_heartbeat(self, partition: int, offset: int, record: dict[str, Any], t: int) -> None:
        interval, rebuffer, bitrate = record["interval_ms"], record["rebuffer_ms"], record["bitrate_kbps"]
        for key in self._playback_keys(record, t, partition):
            state = self._partial("quality", Quality, key, offset)
            if state is not None:
                state.heartbeat(interval, rebuffer, bitrate)
        self._session(partition, record, t, stopped=False)

    def _on_error(self, partition: int, offset: int, record: dict[str, Any], t: int) -> None:
        if record["fatal"]:
            for key in self._playback_keys(record, t, partition):
                state = self._partial("quality", Quality, key, offset)
                if state is not None:
                    state.fatal += 1
        self._session(partition, record, t, stopped=False)

    def _on_stop(self, partition: int, offset: int, record: dict[str, Any], t: int) -> None:
        self._session(partition, record, t, stopped=True)

    def _on_playback(self, partition: int, offset: int, record: dict[str, Any], t: int) -> None:
        self._session(partition, record, t, stopped=False)

    def _session(self, partition: int, record: dict[str, Any], t: int, stopped: bool) -> None:
        self.sessions.seen(partition, record["envelope"]["session_id"], record["title_id"], t, stopped)

    def _on_cdn(self, partition: int, offset: int, record: dict[str, Any], t: int) -> None:
        key = (partition, "cdn_edge", record["edge_id"], t - t % self.window_ms)
        state = self._partial("edges", EdgeHealth, key, offset)
        if state is not None:
            state.request(record["http_status"], record["cache_status"] == "HIT", record["latency_ms"])

    def _on_login(self, partition: int, offset: int, record: dict[str, Any], t: int) -> None:
        env = record["envelope"]
        window = t - t % self.window_ms
        success, ip, account = record["success"], env["client_ip"], env["user_id"]
        by_ip = self._partial("logins", LoginActivity, (partition, "source_ip", ip, window), offset)
        if by_ip is not None:
            by_ip.attempt(success, account, track_failed_only=True)
        by_account = self._partial("logins", LoginActivity, (partition, "account", account, window), offset)
        if by_account is not None:
            by_account.attempt(success, ip, track_failed_only=False)

    _handlers: dict[str, Callable[[Processor, int, int, dict[str, Any], int], None]] = {
        "playback_start": _on_start,
        "playback_heartbeat": _on_heartbeat,
        "playback_error": _on_error,
        "playback_stop": _on_stop,
        "playback_pause": _on_playback,
        "playback_resume": _on_playback,
        "playback_seek": _on_playback,
        "bitrate_switch": _on_playback,
        "cdn_request": _on_cdn,
        "login": _on_login,
    }

    # ------------------------------------------------------------------ reading merged state

    def _partials(self, table: str, entity_type: str, entity: str, window: int) -> list[Partial]:
        cache = self.cache[table]
        return [
            state
            for p in range(self.partitions)
            if (state := cache.get((p, entity_type, entity, window))) is not None
        ]

    def merged(self, table: str, entity_type: str, entity: str, window: int) -> Partial | None:
        found = self._partials(table, entity_type, entity, window)
        if not found:
            return None
        total = TABLES[table]()
        for state in found:
            total.merge(state)
        return total

    def observe(
        self, rule: Rule, table: str, entity: str, window: int, state: Partial | None = None
    ) -> Observation:
        state = state or self.merged(table, rule.entity, entity, window)
        end = window + self.window_ms
        if state is None:
            return Observation(None, 0, window, end)
        samples = state.samples(METRICS[rule.monitor][rule.metric])
        return Observation(state.metric(rule.metric), samples, window, end)

    # ------------------------------------------------------------------ rule evaluation

    def _evaluate_touched(self) -> list[tuple[Rule, dict[str, Any]]]:
        notes: list[tuple[Rule, dict[str, Any]]] = []
        touched, self.touched = self.touched, set()
        mark = self.watermark.value
        for table, entity_type, entity, window in touched:
            rules = self.window_rules.get((table, entity_type))
            if not rules or (mark is not None and window + self.window_ms + self.grace_ms <= mark):
                continue
            state = None
            partials = None
            for rule in rules:
                key = state_key(rule.name, entity_type, entity)
                if key in self.open:
                    continue
                kind = METRICS[rule.monitor][rule.metric]
                partials = partials or self._partials(table, entity_type, entity, window)
                if sum(p.samples(kind) for p in partials) < rule.min_samples:
                    continue  # decided without merging (most entities, most batches)
                state = state or self.merged(table, entity_type, entity, window)
                obs = self.observe(rule, table, entity, window, state)
                if alerts.breaches(rule, obs):
                    notes.append(self._fire(rule, key, entity, obs))
        return notes

    def _fire(self, rule: Rule, key: str, entity: str, obs: Observation) -> tuple[Rule, dict[str, Any]]:
        state = alerts.fire(rule, rule.entity, entity, obs, self.batch_time)
        self.open[key] = state
        self.dirty["alerts"].add(key)
        self.counters.fired += 1
        return rule, alerts.record(rule, state, "FIRING", self.now_ms())

    def _resolve(self, rule: Rule, key: str) -> tuple[Rule, dict[str, Any]]:
        state = self.open.pop(key)
        self.dirty["alerts"].discard(key)
        self.deleted["alerts"][key] = self.partition_of(key)
        self.counters.resolved += 1
        return rule, alerts.record(rule, state, "RESOLVED", self.now_ms())

    def _close(self, old: int | None, new: int) -> list[tuple[Rule, dict[str, Any]]]:
        notes: list[tuple[Rule, dict[str, Any]]] = []
        for window in closed_between(old, new, self.window_ms, self.grace_ms):
            notes += self._close_window(window)
        if self.start_rules:
            for second in closed_between(old, new, 1000, self.grace_ms):
                notes += self._close_second(second)
        self.sessions.expire(new)
        return notes

    def _close_window(self, window: int) -> list[tuple[Rule, dict[str, Any]]]:
        notes = []
        for (table, entity_type), rules in self.window_rules.items():
            entities = {k[2] for k in self.cache[table] if k[3] == window and k[1] == entity_type}
            for rule in rules:
                for entity in sorted(entities | self._open_entities(rule)):
                    notes += self._judge_closed(rule, table, entity, window)
        self.expire(window)
        return notes

    def _open_entities(self, rule: Rule) -> set[str]:
        return {s.entity for s in self.open.values() if s.rule == rule.name}

    def _judge_closed(
        self, rule: Rule, table: str, entity: str, window: int
    ) -> list[tuple[Rule, dict[str, Any]]]:
        key = state_key(rule.name, rule.entity, entity)
        obs = self.observe(rule, table, entity, window)
        state = self.open.get(key)
        if state is None:
            return [self._fire(rule, key, entity, obs)] if alerts.breaches(rule, obs) else []
        if window < state.first_window:
            return []
        self.dirty["alerts"].add(key)
        return [self._resolve(rule, key)] if alerts.step_closed(rule, state, obs) else []

    def _close_second(self, second: int) -> list[tuple[Rule, dict[str, Any]]]:
        notes = []
        for rule in self.start_rules:
            entities = ["all"] if rule.entity == "global" else sorted(self.countries)
            for entity in entities:
                notes += self._judge_second(rule, entity, second)
        return notes

    def _rate(self, entity_type: str, entity: str, second: int, smooth_s: int) -> float:
        cache = self.cache["starts"]
        total = 0
        for k in range(smooth_s):
            for p in range(self.partitions):
                state = cache.get((p, entity_type, entity, second - k * 1000))
                if state is not None:
                    total += state.starts  # type: ignore[attr-defined]
        return total / smooth_s

    def _judge_second(self, rule: Rule, entity: str, second: int) -> list[tuple[Rule, dict[str, Any]]]:
        key = state_key(rule.name, rule.entity, entity)
        baseline = self.baselines.setdefault(key, Baseline())
        if second <= baseline.last:
            return []
        if baseline.first < 0:
            baseline.first = second
        if second < baseline.first + (rule.smooth_s - 1) * 1000:
            baseline.last = second  # the smoothing window is still filling: nothing to learn yet
            self.dirty["baselines"].add(key)
            return []
        rate = self._rate(rule.entity, entity, second, rule.smooth_s)
        z, change = baseline.deviation(rate, rule.smooth_s)
        sign = 1 if rule.direction == "above" else -1
        start = second - (rule.smooth_s - 1) * 1000
        obs = Observation(rate, int(rate), start, second + 1000, baseline.mean, sign * z, sign * change)
        notes = []
        state = self.open.get(key)
        if baseline.n >= rule.warmup_s:
            if state is None and alerts.breaches(rule, obs):
                notes.append(self._fire(rule, key, entity, obs))
            elif state is not None:
                self.dirty["alerts"].add(key)
                if alerts.step_closed(rule, state, obs):
                    notes.append(self._resolve(rule, key))
        suspicious = abs(z) > rule.clear and baseline.held < rule.smooth_s * HOLD_SMOOTHINGS
        if key in self.open or (suspicious and baseline.n >= rule.warmup_s):
            baseline.last = second  # do not learn an incident (or its onset) as normal
            baseline.held += key not in self.open
        else:
            baseline.update(rate, rule.alpha, second)
            baseline.held = 0
        self.dirty["baselines"].add(key)
        return notes

    # ------------------------------------------------------------------ viewers, expiry

    def _viewers_to_tables(self) -> None:
        mark = self.watermark.value
        if mark is None:
            return
        window = mark - mark % self.window_ms
        cache = self.cache["viewers"]
        for partition, title in self.sessions.changed:
            key = (partition, "title", title, window)
            state = cache.get(key)
            if state is None:
                state = cache[key] = Viewers()
            state.viewers = self.sessions.counts.get((partition, title), 0)  # type: ignore[attr-defined]
            state.as_of = mark  # type: ignore[attr-defined]
            self.dirty["viewers"].add(key)
        self.sessions.changed.clear()

    def expire(self, closed_window: int) -> int:
        """Forget windows older than the retention; returns how many keys were dropped."""
        oldest = closed_window - (self.book.windows.retain - 1) * self.window_ms
        oldest_second = closed_window + self.window_ms - self.book.windows.starts_retain_s * 1000
        dropped = 0
        for name in TABLES:
            limit = oldest_second if name == "starts" else oldest
            cache = self.cache[name]
            for key in [k for k in cache if k[3] < limit]:
                del cache[key]
                self.dirty[name].discard(key)
                self.deleted[name][partial_key(key)] = key[0]
                dropped += 1
        return dropped

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop cached state of source partitions this worker no longer owns."""
        gone = set(partitions)
        for name in TABLES:
            for key in [k for k in self.cache[name] if k[0] in gone]:
                del self.cache[name][key]
        for partition in gone:
            self.sessions.forget_partition(partition)
