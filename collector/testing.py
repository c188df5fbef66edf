"""Helpers for tests of the collector and of code that posts to it: an in-memory sink,
a key file with one client, simulator traffic timed around now, waiting for a served
collector, and a Hypothesis strategy of arbitrary JSON values."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

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


class NotReady(RuntimeError):
    """A served collector exited, or did not answer ``/readyz`` in time."""


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Poll ``url``/readyz until it answers 200; raise :class:`NotReady` when the server
    process exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise NotReady(f"collector exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise NotReady(f"collector not ready after {timeout_s}s")


def json_values(max_leaves: int) -> Any:
    """Hypothesis strategy: any JSON value (integers beyond 64 bits signed included), nested
    up to ``max_leaves`` leaves. Hypothesis is a test dependency, imported here only."""
    from hypothesis import strategies as st

    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=max_leaves,
    )
