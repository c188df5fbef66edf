"""Experiment statistics from summary statistics: agreement with scipy and statsmodels on
the same inputs, Monte-Carlo checks of interval coverage and A/A false-positive rates,
the always-valid sequential test under repeated peeking, and the edge cases.

Simulations are seeded and vectorised: per-experiment sums are computed with numpy and
fed to ``from_sums``, exactly as the Spark job feeds its aggregates. ``pytest -s`` prints
the measured rates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from numpy.typing import NDArray
from scipy import integrate, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from batch.experiment_stats import (
    Effect,
    Joint,
    Moments,
    benjamini_hochberg,
    cuped,
    cuped_theta,
    holm,
    mixing_variance,
    sequential,
    sequential_looks,
    srm,
    two_proportions,
    welch,
)

pytestmark = pytest.mark.unit

Array = NDArray[np.float64]
RUNS = 2000


def tight(expected: Any) -> Any:
    """Agreement to 1e-6 (relative), with an absolute floor for values near 0."""
    return pytest.approx(expected, rel=1e-6, abs=1e-12)


def close(value: float, expected: float) -> bool:
    return value == tight(expected)


def moments_rows(values: Array) -> list[Moments]:
    """One Moments per row, from the row's count, sum and sum of squares."""
    n = values.shape[-1]
    return [Moments.from_sums(n, s, ss) for s, ss in zip(values.sum(-1), (values**2).sum(-1), strict=True)]


def joint_rows(y: Array, x: Array) -> list[Joint]:
    sums = (y.sum(-1), (y * y).sum(-1), x.sum(-1), (x * x).sum(-1), (x * y).sum(-1))
    return [Joint.from_sums(y.shape[-1], *row) for row in zip(*sums, strict=True)]


def rate_band(p: float, runs: int) -> tuple[float, float]:
    """Two-sided 99.9% binomial band for a rate p measured over `runs` replications."""
    lo, hi = stats.binom.ppf([0.0005, 0.9995], runs, p)
    return lo / runs, hi / runs


def flag_rate(effects: list[Effect]) -> float:
    return float(np.mean([e.significant for e in effects]))


# --- summaries -----------------------------------------------------------------------------


def test_moments_from_sums_equal_moments_of() -> None:
    v = np.random.default_rng(1).lognormal(3.0, 1.0, 5000)
    of, sums = Moments.of(v), Moments.from_sums(v.size, v.sum(), (v**2).sum())
    assert sums.n == of.n == 5000
    assert close(sums.mean, of.mean)
    assert close(sums.var, of.var)


def test_joint_from_sums_equal_joint_of() -> None:
    rng = np.random.default_rng(2)
    x = rng.gamma(2.0, 5.0, 3000)
    y = 0.7 * x + rng.normal(0, 4, 3000)
    of = Joint.of(y, x)
    sums = Joint.from_sums(x.size, y.sum(), (y * y).sum(), x.sum(), (x * x).sum(), (x * y).sum())
    for field in ("mean_y", "var_y", "mean_x", "var_x", "cov_xy"):
        assert close(getattr(sums, field), getattr(of, field)), field
    assert close(of.cov_xy, np.cov(x, y, ddof=1)[0, 1])
    assert of.y == Moments.of(y)


# --- agreement with scipy and statsmodels --------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "n_c", "n_t", "alpha"), [(3, 500, 450, 0.05), (4, 40, 300, 0.05), (5, 1000, 1000, 0.1)]
)
def test_welch_matches_scipy(seed: int, n_c: int, n_t: int, alpha: float) -> None:
    rng = np.random.default_rng(seed)
    control, treatment = rng.exponential(2.0, n_c), rng.normal(2.3, 4.0, n_t)
    effect = welch(Moments.of(control), Moments.of(treatment), alpha)
    ref = stats.ttest_ind(treatment, control, equal_var=False)
    ci = ref.confidence_interval(confidence_level=1 - alpha)
    assert close(effect.statistic, ref.statistic)
    assert close(effect.p_value, ref.pvalue)
    assert close(effect.df, ref.df)  # type: ignore[arg-type]
    assert close(effect.absolute_ci[0], ci.low)
    assert close(effect.absolute_ci[1], ci.high)
    assert close(effect.relative_lift, treatment.mean() / control.mean() - 1)


@pytest.mark.parametrize(
    ("xc", "nc", "xt", "nt"),
    [
        (120, 1000, 150, 1000),
        (3, 40, 9, 35),
        (4500, 50_000, 4650, 49_700),
        (0, 200, 7, 180),
        (50, 50, 45, 60),
    ],
)
def test_two_proportions_match_statsmodels(xc: int, nc: int, xt: int, nt: int) -> None:
    effect = two_proportions(xc, nc, xt, nt)
    z, p = proportions_ztest([xt, xc], [nt, nc])
    low, high = confint_proportions_2indep(xt, nt, xc, nc, method="wald", compare="diff", alpha=0.05)
    assert close(effect.statistic, z)
    assert close(effect.p_value, p)
    assert effect.absolute_ci == (tight(low), tight(high))
    assert effect.df is None


@pytest.mark.parametrize(
    ("observed", "shares"),
    [([5050, 4950], [0.5, 0.5]), ([5300, 4700], [0.5, 0.5]), ([980, 1010, 2010], [0.25, 0.25, 0.5])],
)
def test_srm_matches_scipy(observed: list[int], shares: list[float]) -> None:
    result = srm(observed, shares)
    ref = stats.chisquare(observed, [sum(observed) * s for s in shares])
    assert close(result.statistic, ref.statistic)
    assert close(result.p_value, ref.pvalue)
    assert result.failed == (ref.pvalue < 0.001)
    assert str(observed) in result.message
    assert ("FAILED" in result.message) == result.failed


def test_srm_names_observed_and_expected_counts() -> None:
    result = srm([5300, 4700], [1, 1])  # shares are normalised
    assert result.failed
    assert result.expected == (5000.0, 5000.0)
    assert "observed [5300, 4700] vs expected [5000.0, 5000.0]" in result.message


P_VALUE_LISTS = [
    [0.01, 0.04, 0.03, 0.2, 0.5],
    [0.0, 1.0, 0.5, 0.5, 0.02, 0.02],
    [0.3],
    [0.001, 0.001, 0.001],
    *[list(np.random.default_rng(seed).uniform(0, 0.2, 12)) for seed in range(5)],
]


@pytest.mark.parametrize("p_values", P_VALUE_LISTS)
@pytest.mark.parametrize(("ours", "method"), [(holm, "holm"), (benjamini_hochberg, "fdr_bh")])
def test_multiple_comparisons_match_statsmodels(
    p_values: list[float], ours: Callable[[list[float]], list[float]], method: str
) -> None:
    adjusted = ours(p_values)
    assert adjusted == tight(list(multipletests(p_values, method=method)[1]))
    assert all(p <= a <= 1 for p, a in zip(p_values, adjusted, strict=True))
    ranked = [a for _, a in sorted(zip(p_values, adjusted, strict=True))]
    assert ranked == sorted(ranked)  # monotone in the raw p-values


def test_multiple_comparisons_of_nothing() -> None:
    assert holm([]) == []
    assert benjamini_hochberg([]) == []


def cuped_data(seed: int, n_c: int, n_t: int, lift: float) -> tuple[Array, Array, Array, Array]:
    """Pre-period x and in-experiment y, correlated, with skewed x (like watch time)."""
    rng = np.random.default_rng(seed)
    x_c, x_t = rng.gamma(2.0, 10.0, n_c), rng.gamma(2.0, 10.0, n_t)
    y_c = 5 + 0.8 * x_c + rng.normal(0, 6, n_c)
    y_t = 5 + lift + 0.8 * x_t + rng.normal(0, 6, n_t)
    return y_c, x_c, y_t, x_t


@pytest.mark.parametrize(("seed", "n_c", "n_t"), [(6, 800, 800), (7, 300, 700)])
def test_cuped_matches_welch_on_adjusted_arrays(seed: int, n_c: int, n_t: int) -> None:
    y_c, x_c, y_t, x_t = cuped_data(seed, n_c, n_t, lift=1.0)
    effect = cuped(Joint.of(y_c, x_c), Joint.of(y_t, x_t))
    # theta by hand: within-group co-deviations pooled over both groups
    dev = [(y - y.mean(), x - x.mean()) for y, x in ((y_c, x_c), (y_t, x_t))]
    theta = sum(float(dy @ dx) for dy, dx in dev) / sum(float(dx @ dx) for _, dx in dev)
    x_bar = np.concatenate([x_c, x_t]).mean()
    adj_c, adj_t = y_c - theta * (x_c - x_bar), y_t - theta * (x_t - x_bar)
    ref = stats.ttest_ind(adj_t, adj_c, equal_var=False)
    ci = ref.confidence_interval()
    assert close(cuped_theta(Joint.of(y_c, x_c), Joint.of(y_t, x_t)), theta)
    assert close(effect.statistic, ref.statistic)
    assert close(effect.p_value, ref.pvalue)
    assert effect.absolute_ci == (tight(ci.low), tight(ci.high))
    assert close(effect.relative_lift, adj_t.mean() / adj_c.mean() - 1)
    adj_se2 = adj_c.var(ddof=1) / n_c + adj_t.var(ddof=1) / n_t
    raw_se2 = y_c.var(ddof=1) / n_c + y_t.var(ddof=1) / n_t
    assert close(effect.variance_reduction, 1 - adj_se2 / raw_se2)  # type: ignore[arg-type]
    assert effect.variance_reduction > 0.7  # type: ignore[operator]  # corr(x, y)^2 is about 0.8 here


@pytest.mark.parametrize(("seed", "n_c", "n_t"), [(8, 1000, 1000), (9, 400, 1200)])
def test_cuped_lift_equals_ols_treatment_coefficient(seed: int, n_c: int, n_t: int) -> None:
    y_c, x_c, y_t, x_t = cuped_data(seed, n_c, n_t, lift=2.0)
    y, x = np.concatenate([y_c, y_t]), np.concatenate([x_c, x_t])
    treated = np.r_[np.zeros(n_c), np.ones(n_t)]
    fit = sm.OLS(y, np.column_stack([np.ones_like(y), treated, x - x.mean()])).fit()
    effect = cuped(Joint.of(y_c, x_c), Joint.of(y_t, x_t))
    # The point estimates are algebraically identical, not merely close: by Frisch-Waugh-Lovell
    # the OLS slope on x is the pooled within-group slope (our theta), and the treatment
    # coefficient is the difference of the group means of y - theta x. Only rounding
    # separates them, so 1e-9 of the lift's scale is an honest tolerance.
    assert effect.absolute_lift == pytest.approx(fit.params[1], rel=1e-9)
    # The standard errors are not identical: OLS uses one homoskedastic residual variance and
    # n - 3 df, Welch one variance per group. With similar residual spread in both groups they
    # agree to a few percent (exactly, up to O(1/n), when n_c == n_t).
    assert effect.se == pytest.approx(fit.bse[1], rel=0.03)


# --- Monte Carlo: coverage and A/A false-positive rates -----------------------------------


def test_relative_lift_interval_covers_at_nominal_rate() -> None:
    rng = np.random.default_rng(10)
    lift = 0.05
    control, treatment = rng.exponential(10.0, (RUNS, 400)), rng.exponential(10.0 * (1 + lift), (RUNS, 400))
    effects = [welch(c, t) for c, t in zip(moments_rows(control), moments_rows(treatment), strict=True)]
    coverage = np.mean([lo <= lift <= hi for lo, hi in (e.relative_ci for e in effects)])
    print(f"\ndelta-method relative CI coverage (welch, exponential, n=400/arm): {coverage:.4f}")
    assert 0.93 <= coverage <= 0.97


def test_relative_lift_interval_of_proportions_covers_at_nominal_rate() -> None:
    rng = np.random.default_rng(11)
    p_c, p_t = 0.2, 0.22
    xs_c, xs_t = rng.binomial(2000, p_c, RUNS), rng.binomial(2000, p_t, RUNS)
    effects = [two_proportions(int(a), 2000, int(b), 2000) for a, b in zip(xs_c, xs_t, strict=True)]
    coverage = np.mean([lo <= p_t / p_c - 1 <= hi for lo, hi in (e.relative_ci for e in effects)])
    print(f"\ndelta-method relative CI coverage (two proportions, n=2000/arm): {coverage:.4f}")
    assert 0.93 <= coverage <= 0.97


def assert_aa_rate(name: str, effects: list[Effect]) -> None:
    rate, (lo, hi) = flag_rate(effects), rate_band(0.05, len(effects))
    print(f"\nA/A false-positive rate, {name}: {rate:.4f} (99.9% band [{lo:.4f}, {hi:.4f}])")
    assert lo <= rate <= hi


def test_aa_false_positive_rate_welch() -> None:
    rng = np.random.default_rng(12)
    control, treatment = rng.exponential(3.0, (RUNS, 200)), rng.exponential(3.0, (RUNS, 250))
    effects = [welch(c, t) for c, t in zip(moments_rows(control), moments_rows(treatment), strict=True)]
    assert_aa_rate("welch", effects)


def test_aa_false_positive_rate_two_proportions() -> None:
    rng = np.random.default_rng(13)
    xs_c, xs_t = rng.binomial(1000, 0.1, RUNS), rng.binomial(1200, 0.1, RUNS)
    assert_aa_rate(
        "two_proportions",
        [two_proportions(int(a), 1000, int(b), 1200) for a, b in zip(xs_c, xs_t, strict=True)],
    )


def test_aa_false_positive_rate_cuped() -> None:
    rng = np.random.default_rng(14)
    x_c, x_t = rng.gamma(2.0, 10.0, (RUNS, 200)), rng.gamma(2.0, 10.0, (RUNS, 200))
    y_c, y_t = 0.8 * x_c + rng.normal(0, 6, x_c.shape), 0.8 * x_t + rng.normal(0, 6, x_t.shape)
    effects = [cuped(c, t) for c, t in zip(joint_rows(y_c, x_c), joint_rows(y_t, x_t), strict=True)]
    assert_aa_rate("cuped", effects)


# --- always-valid sequential test ----------------------------------------------------------

LOOKS, PER_LOOK, PEEK_RUNS = 20, 100, 1000


def cumulative_looks(rng: np.random.Generator, runs: int, lift: float) -> list[list[tuple[Moments, Moments]]]:
    """`runs` experiments of LOOKS cumulative looks, PER_LOOK new units per arm per look."""
    data = rng.exponential(1.0, (runs, 2, LOOKS, PER_LOOK))
    data[:, 1] += lift
    s, ss = data.sum(-1).cumsum(-1), (data**2).sum(-1).cumsum(-1)
    ns = [PER_LOOK * k for k in range(1, LOOKS + 1)]
    return [
        [
            (Moments.from_sums(n, s[r, 0, k], ss[r, 0, k]), Moments.from_sums(n, s[r, 1, k], ss[r, 1, k]))
            for k, n in enumerate(ns)
        ]
        for r in range(runs)
    ]


def test_mixture_likelihood_ratio_matches_numerical_integration() -> None:
    control, treatment = Moments(400, 1.0, 2.0), Moments(380, 1.12, 2.5)
    tau2 = 0.01
    v, d = 2.0 / 400 + 2.5 / 380, 0.12
    # Lambda = integral of N(d; theta, V) / N(d; 0, V) over the mixing density N(theta; 0, tau2)
    ratio, _ = integrate.quad(
        lambda th: (
            stats.norm.pdf(d, th, math.sqrt(v))
            / stats.norm.pdf(d, 0, math.sqrt(v))
            * stats.norm.pdf(th, 0, math.sqrt(tau2))
        ),
        -1,
        1,
    )
    assert sequential(control, treatment, tau2=tau2).p_value == pytest.approx(min(1.0, 1 / ratio), rel=1e-7)


@pytest.mark.parametrize("lift", [0.0, 0.05, 0.1, 0.2, -0.3])
def test_confidence_sequence_excludes_zero_exactly_when_p_below_alpha(lift: float) -> None:
    effect = sequential(Moments(500, 1.0, 1.0), Moments(500, 1.0 + lift, 1.2))
    lo, hi = effect.absolute_ci
    assert effect.significant == (not lo <= 0 <= hi)
    assert effect.tau2 == mixing_variance(Moments(500, 1.0, 1.0), Moments(500, 1.0 + lift, 1.2))
    assert hi - lo > 2 * 1.96 * effect.se  # wider than the fixed-horizon interval


def test_peeking_inflates_naive_welch_but_not_the_always_valid_p_value() -> None:
    experiments = cumulative_looks(np.random.default_rng(15), PEEK_RUNS, lift=0.0)
    naive = np.mean([any(welch(c, t).significant for c, t in looks) for looks in experiments])
    final = [sequential_looks(looks)[-1] for looks in experiments]
    valid = np.mean([e.significant for e in final])
    covered = np.mean([e.absolute_ci[0] <= 0 <= e.absolute_ci[1] for e in final])
    print(
        f"\nA/A with {LOOKS} looks, {PEEK_RUNS} runs: naive welch flags {naive:.4f}, "
        f"always-valid {valid:.4f}, confidence sequence covered 0 in {covered:.4f}"
    )
    assert naive > 0.15
    assert valid <= rate_band(0.05, PEEK_RUNS)[1]
    assert covered >= rate_band(0.95, PEEK_RUNS)[0]


def test_sequential_detects_a_real_effect_and_covers_it() -> None:
    lift, runs = 0.2, 300
    experiments = cumulative_looks(np.random.default_rng(16), runs, lift=lift)
    results = [sequential_looks(looks) for looks in experiments]
    detected = np.mean([r[-1].significant for r in results])
    first = np.median([next((k for k, e in enumerate(r) if e.significant), LOOKS) + 1 for r in results])
    # the running intersection at the last look is inside every look's interval
    covered = np.mean([r[-1].absolute_ci[0] <= lift <= r[-1].absolute_ci[1] for r in results])
    print(
        f"\neffect 0.2 sd: detected in {detected:.4f} of {runs} runs (median first look {first:.0f}), "
        f"confidence sequence covered the lift in {covered:.4f}"
    )
    assert detected >= 0.99
    assert covered >= rate_band(0.95, runs)[0]


def test_sequential_looks_keep_tau2_and_run_min_and_intersection() -> None:
    looks = cumulative_looks(np.random.default_rng(17), 1, lift=0.1)[0]
    results = sequential_looks(looks)
    assert {e.tau2 for e in results} == {mixing_variance(*looks[0])}
    for a, b in itertools.pairwise(results):
        assert b.p_value <= a.p_value
        assert a.absolute_ci[0] <= b.absolute_ci[0]
        assert b.absolute_ci[1] <= a.absolute_ci[1]
    assert results[5].p_value == min(sequential(c, t, tau2=results[0].tau2).p_value for c, t in looks[:6])
    assert sequential_looks([]) == []


def test_sequential_looks_must_be_cumulative() -> None:
    big, small = Moments(100, 1.0, 1.0), Moments(50, 1.0, 1.0)
    with pytest.raises(ValueError, match="cumulative"):
        sequential_looks([(big, big), (small, big)])


# --- edge cases ----------------------------------------------------------------------------


def test_a_group_needs_two_units() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        Moments.of([3.0])
    with pytest.raises(ValueError, match="n >= 2"):
        Moments.from_sums(1, 3.0, 9.0)
    with pytest.raises(ValueError, match="n >= 2"):
        Joint.of([1.0], [2.0])
    with pytest.raises(ValueError, match="n >= 2"):
        Joint.from_sums(0, 0, 0, 0, 0, 0)


def test_invalid_summaries_are_rejected() -> None:
    with pytest.raises(ValueError, match="var must be >= 0"):
        Moments(10, 1.0, -0.5)
    with pytest.raises(ValueError, match="mean must be finite"):
        Moments(10, math.nan, 1.0)
    with pytest.raises(ValueError, match="same length"):
        Joint.of([1.0, 2.0, 3.0], [1.0, 2.0])


def test_a_variance_rounding_below_zero_is_clipped() -> None:
    values = np.full(1000, 1e8 + 0.1)
    assert Moments.from_sums(values.size, values.sum(), (values**2).sum()).var == pytest.approx(0.0, abs=1e-3)


def test_zero_variance_in_both_groups_is_an_error() -> None:
    flat = Moments(100, 2.0, 0.0)
    with pytest.raises(ValueError, match="zero variance"):
        welch(flat, flat)
    with pytest.raises(ValueError, match="zero variance"):
        sequential(flat, Moments(100, 3.0, 0.0))
    with pytest.raises(ValueError, match="zero variance"):
        cuped(Joint(50, 1.0, 0.0, 3.0, 1.0, 0.0), Joint(50, 1.0, 0.0, 3.0, 2.0, 0.0))


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on the constant group
def test_zero_variance_in_one_group_matches_scipy() -> None:
    control, treatment = np.full(30, 2.0), np.random.default_rng(18).normal(2.5, 1.0, 40)
    effect = welch(Moments.of(control), Moments.of(treatment))
    ref = stats.ttest_ind(treatment, control, equal_var=False)
    assert close(effect.statistic, ref.statistic)
    assert close(effect.p_value, ref.pvalue)


def test_proportions_without_any_variation_are_not_significant() -> None:
    for successes in (0, 1):  # nobody converted anywhere, or everybody did
        effect = two_proportions(successes * 200, 200, successes * 150, 150)
        assert (effect.statistic, effect.p_value, effect.absolute_lift) == (0.0, 1.0, 0.0)
        assert effect.absolute_ci == (0.0, 0.0)
    assert math.isnan(two_proportions(0, 200, 0, 150).relative_lift)  # relative to a zero rate
    assert two_proportions(200, 200, 150, 150).relative_ci == (0.0, 0.0)


def test_proportions_with_zero_control_successes_have_no_relative_lift() -> None:
    effect = two_proportions(0, 500, 12, 500)
    assert effect.significant
    assert effect.absolute_ci[0] > 0
    assert math.isnan(effect.relative_lift)
    assert all(math.isnan(b) for b in effect.relative_ci)


@pytest.mark.parametrize(("xc", "nc"), [(-1, 10), (11, 10), (0, 0)])
def test_impossible_proportions_are_rejected(xc: int, nc: int) -> None:
    with pytest.raises(ValueError, match="successes <= n"):
        two_proportions(xc, nc, 5, 10)


def test_srm_rejects_mismatched_or_impossible_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        srm([100, 100, 100], [0.5, 0.5])
    with pytest.raises(ValueError, match="same length"):
        srm([100], [1.0])
    with pytest.raises(ValueError, match="shares > 0"):
        srm([100, 100], [1.0, 0.0])
    with pytest.raises(ValueError, match="counts >= 0"):
        srm([100, -1], [0.5, 0.5])


def test_cuped_needs_a_varying_covariate() -> None:
    group = Joint(50, 1.0, 2.0, 3.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="covariate"):
        cuped(group, Joint(50, 1.5, 2.0, 3.0, 0.0, 0.0))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_alpha_must_be_a_probability(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        welch(Moments(10, 0.0, 1.0), Moments(10, 0.0, 1.0), alpha)


def test_p_values_outside_the_unit_interval_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([math.nan])
