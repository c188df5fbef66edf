"""Alert lifecycle: the hysteresis state machine of one (rule, entity), stable alert ids,
and the ``alert`` records (schemas/alert.avsc) it emits.

An alert FIRES when a rule's metric crosses ``fire`` (with enough samples); it stays
open while closed windows stay beyond ``clear`` and RESOLVES after ``clear_windows``
closed windows on the good side of ``clear``, so a metric wobbling around ``fire`` does
not flap. Its id is derived from rule, entity and the window where it was first seen:
replaying the same events after a restart derives the same id.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from streams.config import Rule


def alert_id(rule: str, entity_type: str, entity: str, first_window: int) -> str:
    digest = hashlib.sha256(f"{rule}\x1f{entity_type}\x1f{entity}\x1f{first_window}".encode()).hexdigest()
    return f"{rule}-{digest[:20]}"


@dataclass
class Observation:
    """A metric value seen for an entity in a window."""

    value: float | None
    samples: int
    window_start: int
    window_end: int
    baseline: float | None = None
    score: float | None = None  # baseline rules: deviation in sigmas, positive toward `direction`
    change: float | None = None  # baseline rules: relative change, positive toward `direction`


@dataclass
class AlertState:
    """An open alert of one (rule, entity); kept in the ``alerts`` table."""

    rule: str
    entity_type: str
    entity: str
    alert_id: str
    first_seen: int
    window_start: int
    window_end: int
    observed: float
    first_window: int = 0
    baseline: float | None = None
    clear_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertState:
        return cls(**data)


def breaches(rule: Rule, obs: Observation) -> bool:
    """Whether the observation crosses the rule's ``fire`` threshold."""
    if obs.value is None or obs.samples < rule.min_samples:
        return False
    if not rule.uses_baseline:
        return rule.bad(obs.value, rule.fire)
    if obs.score is None or obs.change is None or (obs.baseline or 0.0) < rule.min_samples:
        return False
    return obs.score >= rule.fire and obs.change >= rule.min_change


def stays_bad(rule: Rule, obs: Observation) -> bool:
    """Whether an open alert's observation is still beyond ``clear`` (no progress to resolve)."""
    if rule.uses_baseline:
        return obs.score is not None and obs.score > rule.clear
    if obs.value is None or obs.samples < rule.min_samples:
        return False
    return rule.bad(obs.value, rule.clear) and obs.value != rule.clear


def fire(rule: Rule, entity_type: str, entity: str, obs: Observation, seen_at: int) -> AlertState:
    return AlertState(
        rule=rule.name,
        entity_type=entity_type,
        entity=entity,
        alert_id=alert_id(rule.name, entity_type, entity, obs.window_start),
        first_seen=seen_at,
        window_start=obs.window_start,
        window_end=obs.window_end,
        observed=float(obs.value or 0.0),
        first_window=obs.window_start,
        baseline=obs.baseline,
    )


def step_closed(rule: Rule, state: AlertState, obs: Observation) -> bool:
    """Feed a closed window (or second) to an open alert; True when it resolves now."""
    state.window_start, state.window_end = obs.window_start, obs.window_end
    if stays_bad(rule, obs):
        state.clear_count = 0
        state.observed = float(obs.value or 0.0)
        return False
    state.clear_count += 1
    state.observed = float(obs.value or 0.0)  # no data in the window: nothing observed
    return state.clear_count >= rule.clear_windows


def record(rule: Rule, state: AlertState, status: str, now_ms: int) -> dict[str, Any]:
    """The ``alert`` event of a notification."""
    threshold = None if rule.uses_baseline else (rule.fire if status == "FIRING" else rule.clear)
    return {
        "alert_id": state.alert_id,
        "event_time": now_ms,
        "rule": rule.name,
        "status": status,
        "severity": rule.severity,
        "entity_type": state.entity_type,
        "entity": state.entity,
        "window_start": state.window_start,
        "window_end": state.window_end,
        "observed": state.observed,
        "threshold": threshold,
        "baseline": state.baseline,
        "first_seen": state.first_seen,
        "message": message(rule, state, status),
    }


def message(rule: Rule, state: AlertState, status: str) -> str:
    where = f"{state.entity_type} {state.entity}"
    if status == "RESOLVED":
        return f"{rule.name} resolved for {where}: {rule.metric} back to {state.observed:.4g}"
    if rule.uses_baseline:
        return (
            f"{rule.name} on {where}: {rule.metric} {state.observed:.4g} "
            f"vs baseline {state.baseline or 0.0:.4g} ({rule.direction} by {rule.fire:g}+ sigma)"
        )
    side = ">=" if rule.direction == "above" else "<="
    return f"{rule.name} on {where}: {rule.metric} {state.observed:.4g} {side} {rule.fire:g}"


class Fence:
    """Notifications already on the alerts topic, as ``(alert_id, status)``: a worker that
    restarts reads them back first, so replaying events never notifies twice."""

    def __init__(self, seen: set[tuple[str, str]] | None = None) -> None:
        self.seen = set(seen or ())

    def admit(self, alert: dict[str, Any]) -> bool:
        """True (and remembered) the first time a notification is offered."""
        key = (str(alert["alert_id"]), str(alert["status"]))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True
