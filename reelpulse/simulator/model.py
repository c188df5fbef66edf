"""The behavioural model: how taste affinity drives choice, watch time, completion and ratings,
and how edge health drives quality. Pure functions of their arguments; the parameters are
written into the ground truth so checks can recompute what the simulator intended.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

HEARTBEAT_MS = 10_000


def affinity(taste: Sequence[float], genres: Sequence[int]) -> float:
    """How much a user likes a title, in (0, 1]: the title's best genre weight relative to
    the user's favourite genre (1.0 when the title is in the user's top genre)."""
    return max(taste[g] for g in genres) / max(taste)


@dataclass(frozen=True)
class Model:
    """Parameters of the traffic model (rates are probabilities per play, login or heartbeat)."""

    completion_base: float = 0.15
    completion_slope: float = 0.6
    watch_fraction_base: float = 0.12
    watch_fraction_slope: float = 0.25
    watch_fraction_sigma: float = 0.4
    rating_probability: float = 0.25
    rating_base: float = 1.5
    rating_slope: float = 3.0
    rating_sigma: float = 0.8
    popularity_only_share: float = 0.2
    outage_health: float = 0.3
    outage_play_failure_rate: float = 0.45
    outage_http_5xx_rate: float = 0.4
    spike_play_failure_rate: float = 0.3
    base_http_5xx_rate: float = 0.002
    login_retry_probability: float = 0.6
    attack_share_of_rate: float = 0.02
    attack_success_rate: float = 0.005
    app_session_mean_s: float = 240.0
    auth_share_of_rate: float = 0.04
    search_share_of_rate: float = 0.04
    search_click_rate: float = 0.6
    play_after_click_rate: float = 0.5
    pause_rate: float = 0.03
    seek_rate: float = 0.01
    nonfatal_error_rate: float = 0.004
    fatal_error_rate: float = 0.0004
    stall_rate: float = 0.03

    def completion_probability(self, a: float) -> float:
        """Chance a successful play is watched to the end, rising with affinity ``a``."""
        return self.completion_base + self.completion_slope * a

    def watch_fraction_median(self, a: float) -> float:
        """Median share of the title's running time watched in a session (before any
        experiment effect), rising with affinity ``a``; the spread is log-normal."""
        return self.watch_fraction_base + self.watch_fraction_slope * a

    def rating_mean(self, a: float) -> float:
        """Mean star rating before noise and clamping to [0.5, 5.0], rising with ``a``."""
        return self.rating_base + self.rating_slope * a

    def stalls_expected(self, health: float, wall_ms: int) -> float:
        """Expected rebuffering stalls in ``wall_ms`` of playback on an edge of ``health``."""
        return self.stall_rate * (wall_ms / HEARTBEAT_MS) / (health * health)


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw: Knuth's sampler for small means, a rounded normal for large ones."""
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def stars(value: float) -> float:
    """Round to the nearest half star within [0.5, 5.0]."""
    return min(5.0, max(0.5, round(value * 2) / 2))


VARIANTS = ("control", "treatment")


def allocate(experiment_id: str, user_id: str) -> str:
    """Deterministic 50/50 variant of an account: a hash of experiment and user id."""
    digest = hashlib.sha256(f"{experiment_id}:{user_id}".encode()).digest()
    return VARIANTS[int.from_bytes(digest[:8], "big") % 10_000 >= 5_000]
