"""Incidents resolved against the world: absolute windows, concrete targets, and the questions
the traffic model asks of them (how healthy is this edge now, how likely is a play failure)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from reelpulse.simulator.config import Incident, SimulationConfig
from reelpulse.simulator.model import Model
from reelpulse.simulator.world import COUNTRIES, DEVICE_TYPES, Edge, World

ATTACK_COUNTRIES = ("NL", "SE", "PL", "DE", "BR", "IN")


@dataclass
class Resolved:
    """One incident with its window in epoch milliseconds and its concrete target."""

    kind: str
    start_ms: int
    end_ms: int
    target_type: str
    target: str
    details: dict[str, Any] = field(default_factory=dict)

    def active(self, t: int) -> bool:
        return self.start_ms <= t < self.end_ms

    def truth(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "target_type": self.target_type,
            "target": self.target,
            "details": self.details,
        }


class Schedule:
    """Every incident of a run, indexed for the per-event questions of the traffic model."""

    def __init__(self, config: SimulationConfig, world: World, model: Model) -> None:
        self.model = model
        self.incidents = resolve_all(config, world)
        self.outages: list[list[Resolved]] = [[] for _ in world.edges]
        for inc in self.incidents:
            if inc.kind == "edge_outage":
                self.outages[_edge_index(world, inc.target)].append(inc)
        self.spikes = [i for i in self.incidents if i.kind == "play_failure_spike"]
        self.attacks = [i for i in self.incidents if i.kind == "login_attack"]

    def reset(self) -> None:
        """Zero the counters a previous pass left in the incidents' details."""
        for attack in self.attacks:
            attack.details["attempts"] = 0
            attack.details["compromised_users"].clear()

    def health(self, edge: Edge, t: int) -> float:
        """Edge health in (0, 1]: its base health, or the outage health while one is active."""
        for outage in self.outages[edge.index]:
            if outage.start_ms <= t < outage.end_ms:
                return self.model.outage_health
        return edge.base_health

    def play_failure_rate(self, base: float, edge: Edge, device_type: str, country: str, t: int) -> float:
        """Probability that a play attempt at ``t`` fails before its first frame."""
        rate = base
        for outage in self.outages[edge.index]:
            if outage.active(t):
                rate = max(rate, self.model.outage_play_failure_rate)
        for spike in self.spikes:
            hit = device_type if spike.target_type == "device_type" else country
            if hit == spike.target and spike.active(t):
                rate = max(rate, self.model.spike_play_failure_rate)
        return rate


def resolve_all(config: SimulationConfig, world: World) -> list[Resolved]:
    """Resolve every configured incident; the n-th incident of a kind without a target gets
    the n-th default target of that kind (busiest edge, most common device type, ...)."""
    seen: Counter[str] = Counter()
    resolved = []
    for i, incident in enumerate(config.incidents):
        rng = random.Random(f"reelpulse-incident-{config.seed}-{i}")
        resolved.append(resolve(incident, config, world, seen[incident.kind], rng))
        seen[incident.kind] += 1
    return resolved


def resolve(
    incident: Incident, config: SimulationConfig, world: World, nth: int, rng: random.Random
) -> Resolved:
    start = config.start_ms + round(incident.start_s * 1000)
    end = start + max(1, round(incident.duration_s * 1000))
    if incident.kind == "edge_outage":
        edge_id = incident.target or busiest_edges(world)[nth % len(world.edges)].edge_id
        pop = world.edges[_edge_index(world, edge_id)].pop
        return Resolved("edge_outage", start, end, "cdn_edge", edge_id, {"pop": pop})
    if incident.kind == "play_failure_spike":
        target_type, target = spike_target(incident.target, world, nth)
        return Resolved("play_failure_spike", start, end, target_type, target)
    ips = _split(incident.target) or [f"203.0.113.{n}" for n in rng.sample(range(1, 255), 4)]
    details = {
        "source_ips": ips,
        "countries": [rng.choice(ATTACK_COUNTRIES) for _ in ips],
        "attempts": 0,
        "compromised_users": [],
    }
    return Resolved("login_attack", start, end, "source_ip", ",".join(ips), details)


def busiest_edges(world: World) -> list[Edge]:
    """Edges by expected playback load (user activity spread over each country's edges)."""
    load = [0.0] * len(world.edges)
    for user in world.users:
        serving = world.country_edges[user.country]
        for edge in serving:
            load[edge.index] += user.activity / len(serving)
    return sorted(world.edges, key=lambda e: (-load[e.index], e.index))


def spike_target(target: str | None, world: World, nth: int) -> tuple[str, str]:
    """``(target_type, value)`` of a play-failure spike: a device type or a country."""
    if target is None:
        return "device_type", common_device_types(world)[nth % len(DEVICE_TYPES)]
    kind, _, value = target.rpartition("=")
    if kind in ("device_type", "country"):
        return kind, value
    if kind:
        raise ValueError(f"play_failure_spike target {target!r}: use device_type=X or country=XX")
    if target in DEVICE_TYPES:
        return "device_type", target
    if target in dict(COUNTRIES):
        return "country", target
    raise ValueError(
        f"play_failure_spike target {target!r} is neither a device type "
        f"({', '.join(DEVICE_TYPES)}) nor a simulated country"
    )


def common_device_types(world: World) -> list[str]:
    """Device types, most used first (weighted by user activity), ties in fixed order."""
    use: Counter[str] = Counter({kind: 0 for kind in DEVICE_TYPES})
    for user in world.users:
        for device in user.devices:
            use[device.device_type] += round(user.activity * 1000)
    return sorted(DEVICE_TYPES, key=lambda k: (-use[k], list(DEVICE_TYPES).index(k)))


def _edge_index(world: World, edge_id: str) -> int:
    for edge in world.edges:
        if edge.edge_id == edge_id:
            return edge.index
    known = ", ".join(e.edge_id for e in world.edges)
    raise ValueError(f"edge_outage target {edge_id!r} is not a simulated edge; known: {known}")


def _split(target: str | None) -> list[str]:
    return [part.strip() for part in (target or "").split(",") if part.strip()]
