"""What a simulation run is asked to do: size of the world, rate, length, incidents, experiments.

Everything is a frozen dataclass so a config can be hashed, compared and written into the
ground truth as plain JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

IncidentKind = Literal["edge_outage", "login_attack", "play_failure_spike"]
INCIDENT_KINDS: tuple[str, ...] = ("edge_outage", "login_attack", "play_failure_spike")
ExperimentTrigger = Literal["playback", "search"]

DEFAULT_START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: fixed, never the wall clock


def _require(ok: bool, name: str, value: object, problem: str) -> None:
    if not ok:
        raise ValueError(f"simulation {name}={value!r} {problem}")


@dataclass(frozen=True)
class Incident:
    """An injected fault: ``kind`` starts ``start_s`` after the run start and lasts ``duration_s``.

    ``target`` is an edge id for ``edge_outage``; ``device_type=TV`` or ``country=BR`` (or a
    bare device type or country code) for ``play_failure_spike``; a comma-separated list of
    source IPs for ``login_attack``. ``None`` lets the simulator choose deterministically.
    """

    kind: IncidentKind
    start_s: float
    duration_s: float
    target: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(f"incident kind {self.kind!r} is not one of {INCIDENT_KINDS}")
        _require(self.start_s >= 0, "incident start_s", self.start_s, "must be >= 0")
        _require(self.duration_s > 0, "incident duration_s", self.duration_s, "must be > 0")


@dataclass(frozen=True)
class Experiment:
    """An A/B experiment randomized per account, 50/50 by a hash of experiment and user id.

    A user is exposed at their first playback (or search, per ``trigger``) in the run;
    from then on a treatment user's playback watch time is multiplied by ``1 + effect``.
    """

    experiment_id: str
    effect: float = 0.05
    trigger: ExperimentTrigger = "playback"

    def __post_init__(self) -> None:
        _require(self.effect > -1.0, "experiment effect", self.effect, "must be > -1")
        _require(
            self.trigger in ("playback", "search"),
            "experiment trigger",
            self.trigger,
            "must be 'playback' or 'search'",
        )


DEFAULT_EXPERIMENTS = (
    Experiment("exp-autoplay-preview", effect=0.05, trigger="playback"),
    Experiment("exp-search-ranking-v2", effect=0.0, trigger="search"),
)


@dataclass(frozen=True)
class SimulationConfig:
    """Size, pace and content of one simulation. Same config, same events, byte for byte.

    ``duration_s`` and ``max_events`` bound the run (whichever comes first); with both
    ``None`` the run is endless. ``rate`` is the target overall event rate per second of
    virtual time. Sessions with more than ``heartbeat_cap`` heartbeats of content are
    time-compressed: heartbeats stay 10 s apart in event time and each covers more content.
    ``world_seed`` (default: ``seed``) draws the catalog, users and edges: runs with
    different seeds and one world seed are different traffic in the same world (the same
    titles under the same ids; with fewer users, the first users of the larger world).
    """

    seed: int = 0
    world_seed: int | None = None
    start_ms: int = DEFAULT_START_MS
    users: int = 500
    titles: int = 200
    edges: int = 12
    rate: float = 2000.0
    duration_s: float | None = 60.0
    max_events: int | None = None
    incidents: Sequence[Incident] = ()
    experiments: Sequence[Experiment] = DEFAULT_EXPERIMENTS
    heartbeat_cap: int = 12
    play_failure_rate: float = 0.02
    login_failure_rate: float = 0.05
    app_kill_rate: float = 0.03
    cdn_sample_rate: float = 0.5
    warm_start: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "incidents", tuple(self.incidents))
        object.__setattr__(self, "experiments", tuple(self.experiments))
        for name in ("users", "titles", "edges", "heartbeat_cap"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        _require(math.isfinite(self.rate) and self.rate > 0, "rate", self.rate, "must be > 0")
        _require(
            self.duration_s is None or self.duration_s >= 0,
            "duration_s",
            self.duration_s,
            "must be >= 0 or None",
        )
        _require(
            self.max_events is None or self.max_events >= 0,
            "max_events",
            self.max_events,
            "must be >= 0 or None",
        )
        for name in ("play_failure_rate", "login_failure_rate", "app_kill_rate", "cdn_sample_rate"):
            _require(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name), "must be in [0, 1]")
        ids = [e.experiment_id for e in self.experiments]
        _require(len(ids) == len(set(ids)), "experiments", ids, "must have distinct ids")

    @property
    def end_ms(self) -> float:
        """Virtual time at which the run stops (infinite when ``duration_s`` is None)."""
        if self.duration_s is None:
            return math.inf
        return self.start_ms + round(self.duration_s * 1000)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-native values (lists, not tuples)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))
