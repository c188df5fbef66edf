"""How bronze writes a topic's event types: the largest first, ``threads`` at a time, and
on a failure the error raised, no write begun after it and what the finished ones cached
released. Pure scheduling: the writes themselves are recorded, not run
(``tests/integration/test_bronze.py`` runs them on Spark with a real broker)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from batch import bronze

pytestmark = pytest.mark.unit


class Cached:
    """Stands for a DataFrame a PERMISSIVE redo persisted."""

    def __init__(self) -> None:
        self.released = False

    def unpersist(self) -> None:
        self.released = True


class RecordedIngest(bronze.TopicIngest):
    """A topic ingest whose event-type writes only record themselves."""

    def __init__(self, threads: int, fail: str = "", hold: str = "") -> None:
        super().__init__("reelpulse.playback", lake=None, writers=None, threads=threads)  # type: ignore[arg-type]
        self.fail, self.hold = fail, hold
        self.started: list[str] = []
        self.cached: dict[str, Cached] = {}
        self.failed, self.holding = threading.Event(), threading.Event()

    def _ingest(self, parts: list[bronze.Part], batch_id: int) -> bronze.Written:
        name = parts[0].writer.problem  # the event type's name, see parts_of
        self.started.append(name)
        if name == self.fail:
            if self.hold:
                assert self.holding.wait(5)  # fail while the held write runs
            self.failed.set()
            raise RuntimeError(f"{name}: the Delta write failed")
        if name == self.hold:  # still running when the other write fails
            self.holding.set()
            assert self.failed.wait(5)
        self.cached[name] = Cached()
        return bronze.Written(name, parts[0].count, cached=[self.cached[name]])  # type: ignore[list-item]


def parts_of(counts: dict[str, int]) -> list[list[bronze.Part]]:
    """One part per event type, named in ``Writer.problem``, with its row count."""
    rows: Any = None
    return [
        [bronze.Part(bronze.Writer(i, None, "", name), rows, count)]
        for i, (name, count) in enumerate(counts.items())
    ]


COUNTS = {"playback_seek": 10, "playback_heartbeat": 500, "playback_stop": 40, "playback_start": 50}


def test_one_thread_writes_the_event_types_largest_first() -> None:
    ingest = RecordedIngest(threads=1)
    written = ingest._ingest_all(parts_of(COUNTS), batch_id=0)
    assert ingest.started == ["playback_heartbeat", "playback_start", "playback_stop", "playback_seek"]
    assert {w.table: w.rows for w in written} == COUNTS


def test_several_threads_write_every_event_type_once() -> None:
    ingest = RecordedIngest(threads=3)
    written = ingest._ingest_all(parts_of(COUNTS), batch_id=0)
    assert sorted(ingest.started) == sorted(COUNTS)
    assert {w.table: w.rows for w in written} == COUNTS
    assert ingest.started[0] == "playback_heartbeat"  # the largest is submitted first
    assert not any(c.released for c in ingest.cached.values())  # the caller releases them after quarantine


def test_after_a_failed_write_none_begins_the_error_is_raised_and_the_cached_released() -> None:
    ingest = RecordedIngest(threads=2, fail="playback_heartbeat", hold="playback_start")
    with pytest.raises(RuntimeError, match="playback_heartbeat: the Delta write failed"):
        ingest._ingest_all(parts_of(COUNTS), batch_id=0)
    assert ingest.started == ["playback_heartbeat", "playback_start"]  # stop and seek never began
    assert ingest.cached["playback_start"].released  # it finished, but its batch failed


def test_one_thread_stops_at_the_first_failed_write() -> None:
    ingest = RecordedIngest(threads=1, fail="playback_start")
    with pytest.raises(RuntimeError, match="playback_start"):
        ingest._ingest_all(parts_of(COUNTS), batch_id=0)
    assert ingest.started == ["playback_heartbeat", "playback_start"]
