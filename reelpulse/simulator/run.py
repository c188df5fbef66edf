"""The mutable state of one pass over the events: the seeded RNG, who has been exposed to
which experiment, open application sessions, and the weighted choices every source makes."""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Iterator
from typing import Any

from reelpulse.simulator.config import SimulationConfig
from reelpulse.simulator.incidents import Schedule
from reelpulse.simulator.model import Model
from reelpulse.simulator.records import Who, uuid4
from reelpulse.simulator.truth import GroundTruth
from reelpulse.simulator.world import Device, Edge, Title, User, World

# What every source yields: (event_time ms, event type, record), or (time, None, a new
# source) to start another source at that time.
Item = tuple[int, str | None, Any]
Source = Iterator[Item]


class Run:
    """State shared by the sources of one pass. Only ``rng`` supplies randomness."""

    def __init__(
        self,
        config: SimulationConfig,
        world: World,
        schedule: Schedule,
        model: Model,
        truth: GroundTruth,
        label: str = "events",
    ) -> None:
        self.config, self.world, self.schedule, self.model = config, world, schedule, model
        self.truth = truth
        self.rng = random.Random(f"reelpulse-{label}-{config.seed}")
        self.treated = [  # per experiment, per user index: in the treatment arm?
            [experiment["assignment"][u.user_id] == "treatment" for u in world.users]
            for experiment in truth.experiments
        ]
        self.exposed: list[set[int]] = [set() for _ in config.experiments]
        self.app_sessions: dict[tuple[int, int], str] = {}

    def uuid(self) -> str:
        return uuid4(self.rng)

    def pick_user(self) -> User:
        cum = self.world.user_cum
        return self.world.users[bisect(cum, self.rng.random() * cum[-1], hi=len(cum) - 1)]

    def pick_device(self, user: User) -> Device:
        devices = user.devices
        return devices[int(self.rng.random() * len(devices))]

    def pick_title(self, user: User) -> Title:
        """Popularity x taste: a genre by the user's taste, then a title of it by popularity
        (and a share of picks by popularity alone)."""
        rng, world = self.rng, self.world
        if rng.random() >= self.model.popularity_only_share:
            genre = self.pick_genre(user)
            cum = world.genre_cum[genre]
            if cum:
                return world.genre_titles[genre][bisect(cum, rng.random() * cum[-1], hi=len(cum) - 1)]
        cum = world.title_cum
        return world.titles[bisect(cum, rng.random() * cum[-1], hi=len(cum) - 1)]

    def pick_genre(self, user: User) -> int:
        """A genre index drawn by the user's taste weights."""
        cum = user.taste_cum
        return bisect(cum, self.rng.random() * cum[-1], hi=len(cum) - 1)

    def pick_edge(self, country: str) -> Edge:
        edges = self.world.country_edges[country]
        return edges[int(self.rng.random() * len(edges))]

    def app_session(self, user: User, device: Device) -> str:
        """The open application session of a user on a device, opened if there is none."""
        key = (user.index, device.index)
        sid = self.app_sessions.get(key)
        if sid is None:
            sid = self.app_sessions[key] = self.uuid()
        return sid

    def who(self, user: User, device: Device, session_id: str | None = None) -> Who:
        """Envelope context of ``user`` on ``device`` (their app session unless given)."""
        profile = user.profiles[int(self.rng.random() * len(user.profiles))]
        sid = session_id or self.app_session(user, device)
        return Who(user, profile, sid, device, user.country, device.ip)

    def expose(self, user: User, trigger: str) -> list[int]:
        """Experiments (by position) that ``user`` meets for the first time via ``trigger``."""
        fresh = []
        for i, experiment in enumerate(self.config.experiments):
            if experiment.trigger == trigger and user.index not in self.exposed[i]:
                self.exposed[i].add(user.index)
                fresh.append(i)
        return fresh

    def effect(self, user: User) -> float:
        """Watch-time multiplier of the experiments ``user`` is exposed to and treated in."""
        multiplier = 1.0
        for i, experiment in enumerate(self.config.experiments):
            if self.treated[i][user.index] and user.index in self.exposed[i]:
                multiplier *= 1.0 + experiment.effect
        return multiplier

    def exposure(self, t: int, who: Who, i: int) -> Item:
        experiment = self.config.experiments[i]
        variant = "treatment" if self.treated[i][who.user.index] else "control"
        record = {
            "envelope": who.envelope(self.rng, t),
            "experiment_id": experiment.experiment_id,
            "variant": variant,
            "allocation_unit": "ACCOUNT",
        }
        return t, "experiment_exposure", record
