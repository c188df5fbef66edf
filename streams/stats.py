"""Small mergeable statistics: log-bucket histograms for percentiles, and an exponentially
smoothed baseline with its variance for deviation detection."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Bucket i >= 1 holds values in [BASE**(i-1), BASE**i); bucket 0 holds values below 1.
# A percentile read from the histogram is the bucket's geometric midpoint: within
# sqrt(BASE) - 1 (about 3.9 %) of a value in the bucket.
BASE = 1.08
_LOG_BASE = math.log(BASE)


def bucket_of(value: float) -> int:
    return 0 if value < 1 else int(math.log(value) / _LOG_BASE) + 1


def bucket_value(index: int) -> float:
    return 0.5 if index == 0 else BASE ** (index - 0.5)


def hist_add(hist: dict[int, int], value: float) -> None:
    index = 0 if value < 1 else int(math.log(value) / _LOG_BASE) + 1
    hist[index] = hist.get(index, 0) + 1


def hist_merge(into: dict[int, int], other: dict[int, int]) -> None:
    for index, count in other.items():
        into[index] = into.get(index, 0) + count


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of the values in ``hist``; None when it is empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(hist))  # pragma: no cover - unreachable


@dataclass
class Baseline:
    """Exponentially weighted mean and variance of a per-second rate.

    ``last`` is the start (epoch ms) of the last second folded in, so replaying seconds
    after a restart does not fold them in twice; ``first`` the first second seen (the
    first smoothing window after it is still filling up and is not learned).
    """

    mean: float = 0.0
    var: float = 0.0
    n: int = 0
    last: int = -1
    first: int = -1
    held: int = 0  # seconds not learned in a row because they deviated (see processor)

    def update(self, value: float, alpha: float, second: int) -> None:
        if second <= self.last:
            return
        self.last = second
        if self.n == 0:
            self.mean, self.var = value, 0.0
        else:
            diff = value - self.mean
            step = alpha * diff
            self.mean += step
            self.var = (1 - alpha) * (self.var + diff * step)
        self.n += 1

    def sigma(self, smooth_s: int) -> float:
        """Standard deviation of an average over ``smooth_s`` seconds: the learned
        variance plus the Poisson noise of counting (variance mean / smooth_s)."""
        return math.sqrt(self.var + max(self.mean, 0.0) / smooth_s)

    def deviation(self, value: float, smooth_s: int) -> tuple[float, float]:
        """``(z, relative change)`` of ``value`` against the baseline."""
        z = (value - self.mean) / max(self.sigma(smooth_s), 1e-9)
        change = (value - self.mean) / self.mean if self.mean > 0 else 0.0
        return z, change

    def to_json(self) -> dict[str, float | int]:
        return {
            "mean": self.mean,
            "var": self.var,
            "n": self.n,
            "last": self.last,
            "first": self.first,
            "held": self.held,
        }

    @classmethod
    def from_json(cls, data: dict[str, float | int]) -> Baseline:
        return cls(
            float(data["mean"]),
            float(data["var"]),
            int(data["n"]),
            int(data["last"]),
            int(data["first"]),
            int(data["held"]),
        )
