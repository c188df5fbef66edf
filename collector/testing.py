"""Helpers for tests of the collector and of code that posts to it: an in-memory sink,
a key file with one client, and simulator traffic timed around now."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector import keys
from collector.batch import INTERNAL_TYPES, Record
from reelpulse.contract import Contract
from reelpulse.simulator import SimulationConfig, Simulator


class MemorySink:
    """Keeps what is sent; ``down = True`` acknowledges nothing (a broker outage)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.down = False
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, records: Sequence[Record]) -> list[bool]:
        if self.down:
            return [False] * len(records)
        self.records.extend(records)
        return [True] * len(records)

    async def ready(self) -> str | None:
        return "Kafka is down (MemorySink.down)" if self.down else None

    def on(self, topic: str) -> list[Record]:
        return [r for r in self.records if r.topic == topic]


def fake_schema_ids(contract: Contract) -> dict[str, int]:
    return {event.name: index for index, event in enumerate(contract, start=1)}


def key_file(directory: Path, name: str = "test-device") -> tuple[Path, str]:
    """A key file holding one client; returns its path and the client's key."""
    path = directory / "api_keys.json"
    return path, keys.create(path, name)


def device_events(
    count: int, seed: int = 5, now_ms: int | None = None, rate: float = 2000.0
) -> list[tuple[str, dict[str, Any]]]:
    """``count`` simulator events a device would send (no catalog, alerts or dead letters),
    with event times in the seconds before ``now_ms``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    duration_s = max(5.0, 2 * count / rate)
    config = SimulationConfig(
        seed=seed,
        users=max(50, int(rate)),
        titles=50,
        rate=rate,
        duration_s=duration_s,
        start_ms=now_ms - int(duration_s * 1000),
        max_events=count,
    )
    return [(n, r) for n, r in Simulator(config).events() if n not in INTERNAL_TYPES][:count]


def batch(events: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The request body for ``events``."""
    return {"events": [{"type": name, "event": record} for name, record in events]}
