"""Event-time windows and the watermark that closes them."""

from __future__ import annotations

import time
from collections.abc import Callable


def window_start(event_time: int, size_ms: int) -> int:
    """Start of the tumbling window of ``size_ms`` that holds ``event_time`` (epoch ms)."""
    return event_time - event_time % size_ms


def closed_between(old: int | None, new: int, size_ms: int, grace_ms: int) -> list[int]:
    """Starts of the windows that close when the watermark moves from ``old`` to ``new``:
    a window closes once the watermark passes its end plus ``grace_ms``."""
    if old is None or new <= old:
        return []
    first = window_start(old - grace_ms, size_ms)
    starts = []
    start = first
    while start + size_ms + grace_ms <= new:
        if start + size_ms + grace_ms > old:
            starts.append(start)
        start += size_ms
    return starts


class Watermark:
    """How far event time has progressed across the source partitions this worker reads.

    Each ``(topic, partition)`` remembers the latest event time it delivered. The watermark
    is the smallest of those among the partitions that delivered an event within the last
    ``idle_s`` wall seconds (a slow partition holds it back; an idle one does not), or the
    largest overall when every partition is idle. It never moves backwards.
    """

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s, self.clock = idle_s, clock
        self.latest: dict[tuple[str, int], int] = {}
        self.seen: dict[tuple[str, int], float] = {}
        self.value: int | None = None

    def observe(self, topic: str, partition: int, event_time: int) -> None:
        key = (topic, partition)
        if event_time > self.latest.get(key, -1):
            self.latest[key] = event_time
        self.seen[key] = self.clock()

    def advance(self) -> int | None:
        """Recompute the watermark from what was observed; returns it."""
        if not self.latest:
            return self.value
        now = self.clock()
        active = [t for key, t in self.latest.items() if now - self.seen[key] <= self.idle_s]
        candidate = min(active) if active else max(self.latest.values())
        if self.value is None or candidate > self.value:
            self.value = candidate
        return self.value

    def forget(self, topic: str, partition: int) -> None:
        """Stop tracking a partition (revoked from this worker)."""
        self.latest.pop((topic, partition), None)
        self.seen.pop((topic, partition), None)
