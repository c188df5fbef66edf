"""Statistics for A/B experiment reports, computed from per-variant summary statistics.

Pure logic: no Spark, no I/O. A Spark job aggregates each variant to counts, sums, sums
of squares and cross products (``Moments.from_sums``, ``Joint.from_sums``); every test
here works from those summaries alone. ``Moments.of`` and ``Joint.of`` build the same
summaries from numpy arrays, for tests and small callers. Lifts are always treatment
minus control, relative lifts ``treatment / control - 1``.

Summaries (sample variance, ddof=1)::

    mean = S / n        var = (SS - S^2 / n) / (n - 1)        cov = (SXY - SX SY / n) / (n - 1)

Sums of squares lose precision when |mean| >> sd (cancellation); a variance that rounds
below zero is clipped to 0. Sum values centred on a rough reference if that is a concern.

Two independent group means m_c, m_t with variances of the means v_c = var_c / n_c and
v_t = var_t / n_t give the absolute lift d = m_t - m_c with se = sqrt(v_c + v_t), and the
relative lift r = m_t / m_c - 1 with the delta-method variance (Deng, Knoblich and Lu,
"Applying the Delta Method in Metric Analytics", KDD 2018)::

    Var(r) ~= v_t / m_c^2 + m_t^2 v_c / m_c^4

Both intervals are estimate +- critical value * se, with the critical value of the
method (t for Welch and CUPED, z for proportions). A control mean of 0 makes the relative
lift and its interval NaN.

- ``welch``: t = d / se with Welch-Satterthwaite degrees of freedom
  df = (v_c + v_t)^2 / (v_c^2 / (n_c - 1) + v_t^2 / (n_t - 1)) (Welch, Biometrika 1947).
- ``two_proportions``: z = (p_t - p_c) / sqrt(p (1 - p) (1/n_c + 1/n_t)) with the pooled
  p = (x_c + x_t) / (n_c + n_t) for the statistic and p-value; the Wald interval uses the
  unpooled se = sqrt(p_c (1 - p_c) / n_c + p_t (1 - p_t) / n_t), which is ``Effect.se``.
  When nothing varies (all 0 or all 1 in both groups) the statistic is 0 and p = 1.
- ``cuped`` (Deng, Xu, Kohavi and Walker, "Improving the Sensitivity of Online Controlled
  Experiments by Utilizing Pre-Experiment Data", WSDM 2013): theta = pooled within-group
  cov(x, y) / pooled within-group var(x), each pooled as sum((n_g - 1) * stat_g); the
  adjusted metric y' = y - theta (x - mean x over both groups) has group means
  m_y - theta (m_x - mean x) and variances var_y - 2 theta cov + theta^2 var_x; then Welch
  on those. With this theta the lift equals the treatment coefficient of the OLS fit
  y ~ treatment + x exactly (Frisch-Waugh-Lovell). ``Effect.variance_reduction`` is
  1 - se_adjusted^2 / se_raw^2, the variance saved on the lift (~ corr(x, y)^2).
- ``srm``: chi-square goodness of fit, sum (o - e)^2 / e with k - 1 degrees of freedom
  (Fabijan et al., "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments",
  KDD 2019).
- ``holm`` (Holm, Scand. J. Statist. 1979): sorted p_(1) <= ... <= p_(m),
  adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). ``benjamini_hochberg`` (Benjamini and
  Hochberg, JRSS-B 1995): adj_(i) = min_{j >= i} min(1, m p_(j) / j).
- ``sequential``: the mixture sequential probability ratio test (mSPRT) of Johari,
  Koomen, Pekelis and Walsh ("Peeking at A/B Tests", KDD 2017; "Always Valid Inference:
  Continuous Monitoring of A/B Tests", Operations Research 2022). With V = v_c + v_t (plug-in
  variances) and a normal mixing distribution N(theta_0, tau2) over the difference::

      Lambda_n(theta_0) = sqrt(V / (V + tau2)) * exp(tau2 (d - theta_0)^2 / (2 V (V + tau2)))

  The always-valid p-value is p_n = min(1, 1 / Lambda_n(0)), valid at any look however it
  was chosen; monotonicity is the caller's: report the running minimum over looks, which
  is equally valid (``sequential_looks`` does). The
  confidence sequence is {theta_0 : Lambda_n(theta_0) < 1 / alpha}, i.e. d +- h with
  h^2 = 2 V (V + tau2) / tau2 * (log(1 / alpha) + log((V + tau2) / V) / 2); the running
  intersection over looks is again valid. The relative interval applies the same boundary
  to the delta-method variance with mixing variance tau2 / m_c^2 (an approximation).
  Mixing variance: by default tau2 = (0.1 sd)^2 with sd^2 = (var_c + var_t) / 2, a prior
  of effects around a tenth of a standard deviation (``mixing_variance``). The boundary
  is narrowest when tau2 ~= 8 V (alpha = 0.05), i.e. near 1,600 units per arm for this
  default; a tau2 that is too large costs only logarithmically (about 25% wider at a
  million per arm), one that is too small costs much more, hence the generous default.
  For the guarantee, tau2 must not change between looks: ``sequential_looks`` fixes it
  from the first look; a caller of ``sequential`` should pass ``Effect.tau2`` of its first
  look to every later one.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "DEFAULT_MIXING_SD",
    "Effect",
    "Joint",
    "Moments",
    "SrmResult",
    "benjamini_hochberg",
    "cuped",
    "cuped_theta",
    "holm",
    "mixing_variance",
    "sequential",
    "sequential_looks",
    "srm",
    "two_proportions",
    "welch",
]

DEFAULT_MIXING_SD = 0.1
"""Default mSPRT mixing standard deviation, in units of the metric's standard deviation."""

Interval = tuple[float, float]


# --- validation ----------------------------------------------------------------------------


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _check_n(n: int) -> int:
    n = operator.index(n)
    if n < 2:
        raise ValueError(f"a group needs n >= 2 for a sample variance, got n={n}")
    return n


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")


def _check_variance(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _cov(n: int, sa: float, sb: float, sab: float) -> float:
    return (sab - sa * sb / n) / (n - 1)


def _var(n: int, s: float, ss: float) -> float:
    return max(0.0, _cov(n, s, s, ss))


# --- summaries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Count, mean and sample variance (ddof=1) of one metric in one group."""

    n: int
    mean: float
    var: float

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite(mean=self.mean, var=self.var)
        _check_variance(var=self.var)

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> Moments:
        """From the count, sum and sum of squares of the metric."""
        n = _check_n(n)
        return cls(n, float(total) / n, _var(n, float(total), float(total_sq)))

    @classmethod
    def of(cls, values: ArrayLike) -> Moments:
        """From the raw values (tests, small callers)."""
        v = _vector(values, "values")
        return cls(_check_n(v.size), float(v.mean()), float(v.var(ddof=1)))


@dataclass(frozen=True)
class Joint:
    """Moments of a metric y and its pre-exposure covariate x in one group (ddof=1)."""

    n: int
    mean_y: float
    var_y: float
    mean_x: float
    var_x: float
    cov_xy: float

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite(mean_y=self.mean_y, var_y=self.var_y, mean_x=self.mean_x)
        _check_finite(var_x=self.var_x, cov_xy=self.cov_xy)
        _check_variance(var_y=self.var_y, var_x=self.var_x)

    @classmethod
    def from_sums(cls, n: int, sy: float, syy: float, sx: float, sxx: float, sxy: float) -> Joint:
        """From the count, sums, sums of squares and the cross product sum(x * y)."""
        n = _check_n(n)
        sy, sx = float(sy), float(sx)
        return cls(n, sy / n, _var(n, sy, float(syy)), sx / n, _var(n, sx, float(sxx)), _cov(n, sx, sy, sxy))

    @classmethod
    def of(cls, y: ArrayLike, x: ArrayLike) -> Joint:
        """From the raw values of the metric and the covariate, unit by unit."""
        yv, xv = _vector(y, "y"), _vector(x, "x")
        if yv.size != xv.size:
            raise ValueError(f"y and x must have the same length, got {yv.size} and {xv.size}")
        n = _check_n(yv.size)
        cov = float(np.dot(yv - yv.mean(), xv - xv.mean()) / (n - 1))
        return cls(n, float(yv.mean()), float(yv.var(ddof=1)), float(xv.mean()), float(xv.var(ddof=1)), cov)

    @property
    def y(self) -> Moments:
        """The metric alone."""
        return Moments(self.n, self.mean_y, self.var_y)


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """Treatment versus control: lifts with (1 - alpha) intervals and the test's outcome.

    ``se`` is the standard error of the absolute lift used for its interval; ``df`` is
    None for z-based methods. ``variance_reduction`` is set by CUPED, ``tau2`` (the mixing
    variance) by the sequential test, whose ``statistic`` is d / se for information (its
    p-value comes from the mixture likelihood ratio).
    """

    method: str
    alpha: float
    control_mean: float
    treatment_mean: float
    absolute_lift: float
    absolute_ci: Interval
    relative_lift: float
    relative_ci: Interval
    se: float
    statistic: float
    df: float | None
    p_value: float
    variance_reduction: float | None = None
    tau2: float | None = None

    @property
    def significant(self) -> bool:
        """Whether the p-value is below alpha."""
        return self.p_value < self.alpha


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio-mismatch check: chi-square goodness of fit of the group sizes."""

    statistic: float
    df: int
    p_value: float
    failed: bool
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    threshold: float
    message: str


@dataclass(frozen=True)
class _Pair:
    """Two independent group means and the variances of those means (var / n)."""

    mc: float
    vc: float
    mt: float
    vt: float

    @classmethod
    def of(cls, control: Moments, treatment: Moments) -> _Pair:
        return cls(control.mean, control.var / control.n, treatment.mean, treatment.var / treatment.n)

    @property
    def diff(self) -> float:
        return self.mt - self.mc

    @property
    def var(self) -> float:
        return self.vc + self.vt

    @property
    def relative(self) -> float:
        return self.mt / self.mc - 1 if self.mc != 0 else math.nan

    @property
    def relative_var(self) -> float:
        """Delta method: v_t / m_c^2 + m_t^2 v_c / m_c^4."""
        return self.vt / self.mc**2 + self.mt**2 * self.vc / self.mc**4 if self.mc != 0 else math.nan


def _effect(
    method: str,
    alpha: float,
    pair: _Pair,
    half: float,
    rel_half: float,
    *,
    statistic: float,
    df: float | None,
    p_value: float,
    tau2: float | None = None,
) -> Effect:
    d, r = pair.diff, pair.relative
    return Effect(
        method=method,
        alpha=alpha,
        control_mean=pair.mc,
        treatment_mean=pair.mt,
        absolute_lift=d,
        absolute_ci=(d - half, d + half),
        relative_lift=r,
        relative_ci=(r - rel_half, r + rel_half),
        se=math.sqrt(pair.var),
        statistic=statistic,
        df=df,
        p_value=p_value,
        tau2=tau2,
    )


# --- fixed-horizon tests -------------------------------------------------------------------


def _require_spread(control: Moments, treatment: Moments) -> None:
    if control.var == 0 and treatment.var == 0:
        raise ValueError("both groups have zero variance: the test statistic is undefined")


def _welch_df(pair: _Pair, control: Moments, treatment: Moments) -> float:
    return pair.var**2 / (pair.vc**2 / (control.n - 1) + pair.vt**2 / (treatment.n - 1))


def welch(control: Moments, treatment: Moments, alpha: float = 0.05) -> Effect:
    """Welch's unequal-variance t-test and t intervals (Welch-Satterthwaite df)."""
    _check_alpha(alpha)
    _require_spread(control, treatment)
    pair = _Pair.of(control, treatment)
    df = _welch_df(pair, control, treatment)
    t = pair.diff / math.sqrt(pair.var)
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    p = float(2 * stats.t.sf(abs(t), df))
    half, rel_half = crit * math.sqrt(pair.var), crit * math.sqrt(pair.relative_var)
    return _effect("welch", alpha, pair, half, rel_half, statistic=t, df=df, p_value=p)


def _proportion(successes: int, n: int, group: str) -> float:
    successes, n = operator.index(successes), operator.index(n)
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"{group}: need n >= 1 and 0 <= successes <= n, got {successes} of {n}")
    return successes / n


def _pooled_z(pc: float, nc: int, pt: float, nt: int) -> float:
    pooled = (pc * nc + pt * nt) / (nc + nt)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / nt))
    return (pt - pc) / se0 if se0 > 0 else 0.0


def two_proportions(
    control_successes: int, control_n: int, treatment_successes: int, treatment_n: int, alpha: float = 0.05
) -> Effect:
    """Two-proportion z-test (pooled) with a Wald interval (unpooled) for the difference."""
    _check_alpha(alpha)
    pc = _proportion(control_successes, control_n, "control")
    pt = _proportion(treatment_successes, treatment_n, "treatment")
    pair = _Pair(pc, pc * (1 - pc) / control_n, pt, pt * (1 - pt) / treatment_n)
    z = _pooled_z(pc, control_n, pt, treatment_n)
    crit = float(stats.norm.ppf(1 - alpha / 2))
    half, rel_half = crit * math.sqrt(pair.var), crit * math.sqrt(pair.relative_var)
    p = float(2 * stats.norm.sf(abs(z)))
    return _effect("two_proportions", alpha, pair, half, rel_half, statistic=z, df=None, p_value=p)


def cuped_theta(control: Joint, treatment: Joint) -> float:
    """Pooled within-group cov(x, y) / var(x): the CUPED coefficient."""
    sxx = (control.n - 1) * control.var_x + (treatment.n - 1) * treatment.var_x
    if sxx == 0:
        raise ValueError("the covariate x has zero variance in both groups: CUPED cannot adjust")
    return ((control.n - 1) * control.cov_xy + (treatment.n - 1) * treatment.cov_xy) / sxx


def _adjusted(group: Joint, theta: float, mean_x: float) -> Moments:
    var = group.var_y - 2 * theta * group.cov_xy + theta**2 * group.var_x
    return Moments(group.n, group.mean_y - theta * (group.mean_x - mean_x), max(0.0, var))


def cuped(control: Joint, treatment: Joint, alpha: float = 0.05) -> Effect:
    """Welch's test on the CUPED-adjusted metric y - theta (x - mean x)."""
    theta = cuped_theta(control, treatment)
    mean_x = (control.n * control.mean_x + treatment.n * treatment.mean_x) / (control.n + treatment.n)
    adjusted = welch(_adjusted(control, theta, mean_x), _adjusted(treatment, theta, mean_x), alpha)
    raw_var = _Pair.of(control.y, treatment.y).var
    return replace(adjusted, method="cuped", variance_reduction=1 - adjusted.se**2 / raw_var)


# --- sample ratio mismatch -----------------------------------------------------------------


def _srm_inputs(observed: Sequence[int], shares: Sequence[float]) -> tuple[tuple[int, ...], list[float]]:
    if len(observed) != len(shares) or len(observed) < 2:
        raise ValueError(f"observed and expected_shares need the same length >= 2, got {observed}, {shares}")
    counts = tuple(operator.index(o) for o in observed)
    if min(counts) < 0 or sum(counts) == 0 or not all(s > 0 and math.isfinite(s) for s in shares):
        raise ValueError(f"need counts >= 0 (not all 0) and shares > 0, got {observed}, {shares}")
    return counts, [s / math.fsum(shares) for s in shares]


def _srm_message(result: SrmResult) -> str:
    verdict = "FAILED" if result.failed else "passed"
    expected = ", ".join(f"{e:.1f}" for e in result.expected)
    return (
        f"SRM check {verdict}: observed {list(result.observed)} vs expected [{expected}] "
        f"(chi2={result.statistic:.3f}, df={result.df}, p={result.p_value:.3g}, threshold {result.threshold})"
    )


def srm(observed: Sequence[int], expected_shares: Sequence[float], threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of group sizes to expected shares (normalised to sum 1)."""
    counts, shares = _srm_inputs(observed, expected_shares)
    expected = tuple(sum(counts) * s for s in shares)
    chi2 = math.fsum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True))
    df = len(counts) - 1
    p = float(stats.chi2.sf(chi2, df))
    result = SrmResult(chi2, df, p, p < threshold, counts, expected, threshold, "")
    return replace(result, message=_srm_message(result))


# --- multiple comparisons ------------------------------------------------------------------


def _p_array(p_values: Sequence[float]) -> NDArray[np.float64]:
    p = _vector(p_values, "p_values")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p-values must be in [0, 1], got {list(p_values)}")
    return p


def _unsort(sorted_values: NDArray[np.float64], order: NDArray[np.intp]) -> list[float]:
    out = np.empty_like(sorted_values)
    out[order] = np.minimum(sorted_values, 1.0)
    return [float(v) for v in out]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error), in the input's order."""
    p = _p_array(p_values)
    order = np.argsort(p, kind="stable")
    scaled = (p.size - np.arange(p.size)) * p[order]
    return _unsort(np.maximum.accumulate(scaled), order)


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg step-up adjusted p-values (false discovery rate), in the input's order."""
    p = _p_array(p_values)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (p.size / np.arange(1, p.size + 1))  # the largest p keeps exactly p
    return _unsort(np.minimum.accumulate(scaled[::-1])[::-1], order)


# --- always-valid sequential test (mSPRT) --------------------------------------------------


def mixing_variance(control: Moments, treatment: Moments, effect_sd: float = DEFAULT_MIXING_SD) -> float:
    """Default mSPRT mixing variance: (effect_sd * sd)^2 with sd^2 = (var_c + var_t) / 2."""
    return effect_sd**2 * (control.var + treatment.var) / 2


def _log_mixture_lr(diff: float, v: float, tau2: float) -> float:
    return 0.5 * math.log(v / (v + tau2)) + tau2 * diff**2 / (2 * v * (v + tau2))


def _cs_half_width(v: float, tau2: float, alpha: float) -> float:
    if math.isnan(v) or v == 0:
        return v
    return math.sqrt(2 * v * (v + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * math.log((v + tau2) / v)))


def sequential(
    control: Moments, treatment: Moments, alpha: float = 0.05, tau2: float | None = None
) -> Effect:
    """mSPRT at one look: always-valid p-value min(1, 1 / Lambda) and confidence sequence."""
    _check_alpha(alpha)
    _require_spread(control, treatment)
    tau2 = mixing_variance(control, treatment) if tau2 is None else tau2
    if not (tau2 > 0 and math.isfinite(tau2)):
        raise ValueError(f"tau2 must be positive and finite, got {tau2}")
    pair = _Pair.of(control, treatment)
    p = math.exp(min(0.0, -_log_mixture_lr(pair.diff, pair.var, tau2)))
    half = _cs_half_width(pair.var, tau2, alpha)
    rel_half = _cs_half_width(pair.relative_var, tau2 / pair.mc**2, alpha) if pair.mc != 0 else math.nan
    z = pair.diff / math.sqrt(pair.var)
    return _effect("msprt", alpha, pair, half, rel_half, statistic=z, df=None, p_value=p, tau2=tau2)


def _intersect(a: Interval, b: Interval) -> Interval:
    """Intersection; NaN bounds are ignored. Empty (lo > hi) only with probability <= alpha."""
    return float(np.fmax(a[0], b[0])), float(np.fmin(a[1], b[1]))


def _running(previous: Effect, current: Effect) -> Effect:
    return replace(
        current,
        p_value=min(previous.p_value, current.p_value),
        absolute_ci=_intersect(previous.absolute_ci, current.absolute_ci),
        relative_ci=_intersect(previous.relative_ci, current.relative_ci),
    )


def _check_cumulative(looks: Sequence[tuple[Moments, Moments]]) -> None:
    for (c0, t0), (c1, t1) in itertools.pairwise(looks):
        if c1.n < c0.n or t1.n < t0.n:
            raise ValueError("looks must be cumulative: a group's size may not decrease between looks")


def sequential_looks(
    looks: Sequence[tuple[Moments, Moments]], alpha: float = 0.05, tau2: float | None = None
) -> list[Effect]:
    """mSPRT over cumulative looks (control, treatment), oldest first.

    Each result carries the running minimum of the always-valid p-values and the running
    intersection of the intervals up to its look. tau2 defaults to ``mixing_variance`` of
    the first look and is kept for every look.
    """
    _check_cumulative(looks)
    results: list[Effect] = []
    for control, treatment in looks:
        tau2 = mixing_variance(control, treatment) if tau2 is None else tau2
        current = sequential(control, treatment, alpha, tau2)
        results.append(_running(results[-1], current) if results else current)
    return results
