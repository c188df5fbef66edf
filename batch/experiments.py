"""A/B experiment reports from the lake: gold ``experiment_user_metrics`` -> gold
``experiment_results`` (through its quality gate) and one HTML report per experiment.
Metric catalogue, analysis policy and the results table's contract: ``experiments.yml``;
the statistics: ``experiment_stats.py``.

Three stages, each testable alone:

1. :func:`daily_sums`: one Spark aggregation of the per-user rows to, per experiment,
   variant and exposure date, the analysed and the excluded users and each metric's n,
   sum, sum of squares, covariate sums and cross product. :func:`collect_sums` brings
   those few rows to the driver as one :class:`Daily` per experiment; no per-user row
   ever leaves Spark, so the cost on the driver does not grow with the users.
2. :func:`analyze`: a pure function of one experiment's :class:`Daily` and the
   :class:`Catalogue`: SRM, per metric Welch or the two-proportion test, CUPED, the
   mSPRT over the cumulative daily looks, Holm and Benjamini-Hochberg.
3. :func:`run` publishes the results through the gate (:func:`gated`), then renders the
   reports (matplotlib plots as inline SVG in the Jinja2 page ``experiment_report.html``)
   under ``Lake.reports("experiments")``.

Guarantee: a full recompute of every experiment analysed; the same gold rows give the
same results (integral sums are exact), ``computed_at`` aside.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import dropwhile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import experiment_stats as st
from batch import quality
from batch import spark as spark_support
from batch.lake import Lake, LakeLocationError, exists, local_path
from reelpulse.errors import ReelpulseError
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("reelpulse.batch.experiments")

CONTRACT = Path(__file__).with_name("experiments.yml")
TEMPLATE = Path(__file__).with_name("experiment_report.html")
SOURCE = "experiment_user_metrics"
RESULTS = "experiment_results"
REPORTS = "experiments"  # Lake.reports(REPORTS)
RAW_METHODS = {"mean": "welch", "proportion": "two_proportions"}
ROLES = ("primary", "secondary", "guardrail")
DIRECTIONS = ("increase", "decrease")
CORRECTIONS = ("holm", "benjamini_hochberg")
INTEGRAL = ("bigint", "int", "smallint", "tinyint", "boolean")
SPLIT = 31  # integral products are summed as two longs, above and below this bit: exact
SEP = "__"  # aggregate column names: <metric>__<sum>
SUMS = ("sy", "syy", "sx", "sxx", "sxy")
EXPOSURES_SQL = f"""
SELECT experiment_id, variant, count(*) AS exposed_users,
       count(*) FILTER (WHERE multiple_variants) AS multiple_variants,
       min(exposure_date) AS first_exposure, max(exposure_date) AS last_exposure
FROM gold.{SOURCE} GROUP BY experiment_id, variant ORDER BY experiment_id, variant"""

Publish = Callable[[str, "DataFrame"], None]
Look = tuple[dt.date, st.Effect]


class ExperimentError(ReelpulseError, ValueError):
    """An experiment cannot be analysed as asked; the message says why and what to do."""

    def __init__(self, experiment_id: str | None, reason: str) -> None:
        self.experiment_id, self.reason = experiment_id, reason
        super().__init__(f"experiment {experiment_id!r}: {reason}" if experiment_id else reason)


def load_contract() -> dict[str, Any]:
    """The catalogue, the policy and the results table's contract (``experiments.yml``)."""
    import yaml

    return dict(yaml.safe_load(CONTRACT.read_text()))


# --- the catalogue -------------------------------------------------------------------------------


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{CONTRACT.name}: {what}")


@dataclass(frozen=True)
class Metric:
    """A metric of the catalogue: a per-user column, how it is tested, its CUPED
    covariate (if any), its role and which direction is better."""

    name: str
    column: str
    kind: str  # mean | proportion
    role: str  # primary | secondary | guardrail
    direction: str  # increase | decrease
    covariate: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _require(self.kind in RAW_METHODS, f"metric {self.name}: kind must be one of {list(RAW_METHODS)}")
        _require(self.role in ROLES, f"metric {self.name}: role must be one of {list(ROLES)}")
        _require(self.direction in DIRECTIONS, f"metric {self.name}: direction must be one of {DIRECTIONS}")

    @property
    def raw_method(self) -> str:
        return RAW_METHODS[self.kind]


@dataclass(frozen=True)
class Catalogue:
    """The metrics and the analysis policy of ``experiments.yml``."""

    metrics: tuple[Metric, ...]
    control: str = "control"
    alpha: float = 0.05
    srm_threshold: float = 0.001
    correction: str = "holm"
    sequential_min_users: int = 100
    allocations: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.correction in CORRECTIONS, f"analysis.correction must be one of {CORRECTIONS}")
        _require(len({m.name for m in self.metrics}) == len(self.metrics), "metric names must be unique")

    @classmethod
    def load(cls, contract: Mapping[str, Any] | None = None) -> Catalogue:
        data = load_contract() if contract is None else contract
        metrics = tuple(Metric(name=name, **spec) for name, spec in data["metrics"].items())
        overrides = data.get("experiments") or {}
        allocations = {e: dict(spec.get("allocation") or {}) for e, spec in overrides.items()}
        return cls(metrics, allocations=allocations, **data["analysis"])

    def shares(self, experiment_id: str, variants: Sequence[str]) -> list[float]:
        """Expected allocation shares of ``variants``: the override, else equal."""
        allocation = self.allocations.get(experiment_id)
        if not allocation:
            return [1.0] * len(variants)
        if set(allocation) != set(variants):
            raise ExperimentError(
                experiment_id,
                f"the allocation in {CONTRACT.name} lists {sorted(allocation)}, the data has "
                f"{sorted(variants)}: list every variant under experiments.{experiment_id}.allocation",
            )
        return [float(allocation[v]) for v in variants]


# --- summary sums --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sums:
    """Sums of one metric y over a set of users: n, sum(y), sum(y^2) and, for CUPED, of
    its covariate x: sum(x), sum(x^2), sum(x * y). Sums of the same metric add up."""

    n: int = 0
    sy: float = 0.0
    syy: float = 0.0
    sx: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.n + other.n, self.sy + other.sy, self.syy + other.syy,
            self.sx + other.sx, self.sxx + other.sxx, self.sxy + other.sxy,
        )  # fmt: skip

    def moments(self) -> st.Moments:
        return st.Moments.from_sums(self.n, self.sy, self.syy)

    def joint(self) -> st.Joint:
        return st.Joint.from_sums(self.n, self.sy, self.syy, self.sx, self.sxx, self.sxy)


@dataclass(frozen=True)
class Group:
    """One variant's users (of one exposure date, or cumulated): those analysed, those
    excluded as ``multiple_variants``, and each metric's sums over the analysed ones."""

    users: int = 0
    excluded: int = 0
    metrics: Mapping[str, Sums] = field(default_factory=dict)

    def __add__(self, other: Group) -> Group:
        names = sorted(self.metrics.keys() | other.metrics.keys())
        sums = {m: self.sums(m) + other.sums(m) for m in names}
        return Group(self.users + other.users, self.excluded + other.excluded, sums)

    def sums(self, metric: str) -> Sums:
        return self.metrics.get(metric, Sums())


@dataclass(frozen=True)
class Daily:
    """One experiment's groups per exposure date and variant: what the Spark pass gives."""

    experiment_id: str
    days: Mapping[dt.date, Mapping[str, Group]]

    @cached_property
    def variants(self) -> list[str]:
        return sorted({variant for groups in self.days.values() for variant in groups})

    @cached_property
    def looks(self) -> list[tuple[dt.date, dict[str, Group]]]:
        """Every variant's groups cumulated up to each exposure date, oldest first."""
        running = {variant: Group() for variant in self.variants}
        looks = []
        for date in sorted(self.days):
            running = {v: group + self.days[date].get(v, Group()) for v, group in running.items()}
            looks.append((date, running))
        return looks

    @cached_property
    def totals(self) -> dict[str, Group]:
        """Every variant's groups over all dates."""
        return self.looks[-1][1] if self.looks else {}


# --- the analysis (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One comparison of a treatment variant with control on one metric by one method."""

    variant: str
    metric: Metric
    method: str
    headline: bool
    n_control: int
    n_treatment: int
    effect: st.Effect
    p_holm: float = math.nan
    p_bh: float = math.nan
    significant: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return self.variant, self.metric.name, self.method

    @property
    def outcome(self) -> str:
        """better / worse by the metric's direction when significant, else inconclusive."""
        if not self.significant:
            return "inconclusive"
        return (
            "better" if (self.effect.absolute_lift > 0) == (self.metric.direction == "increase") else "worse"
        )


@dataclass(frozen=True)
class Analysis:
    """Everything the report of one experiment shows. ``looks`` holds, per (treatment
    variant, metric), the running mSPRT result at each daily look."""

    experiment_id: str
    control: str
    treatments: tuple[str, ...]
    users: Mapping[str, int]
    excluded: Mapping[str, int]
    shares: tuple[float, ...]
    srm: st.SrmResult
    results: tuple[Result, ...]
    looks: Mapping[tuple[str, str], tuple[Look, ...]]
    notes: tuple[str, ...]
    data_through: dt.date
    alpha: float

    @property
    def variants(self) -> tuple[str, ...]:
        return self.control, *self.treatments


@dataclass
class _Comparison:
    results: list[Result] = field(default_factory=list)
    looks: tuple[Look, ...] = ()
    notes: list[str] = field(default_factory=list)


def analyze(daily: Daily, catalogue: Catalogue) -> Analysis:
    """Every treatment variant against control on every metric, from the daily sums."""
    control, treatments = _arms(daily, catalogue.control)
    totals, arms = daily.totals, [control, *treatments]
    shares = catalogue.shares(daily.experiment_id, arms)
    srm = st.srm([totals[v].users for v in arms], shares, catalogue.srm_threshold)
    pairs = [(t, m) for t in treatments for m in catalogue.metrics]
    compared = {(t, m.name): compare(daily, catalogue, control, t, m) for t, m in pairs}
    return Analysis(
        daily.experiment_id, control, tuple(treatments),
        users={v: totals[v].users for v in arms}, excluded={v: totals[v].excluded for v in arms},
        shares=tuple(shares), srm=srm,
        results=adjust([r for c in compared.values() for r in c.results], catalogue),
        looks={key: c.looks for key, c in compared.items() if c.looks},
        notes=tuple(n for c in compared.values() for n in c.notes),
        data_through=max(daily.days), alpha=catalogue.alpha,
    )  # fmt: skip


def _arms(daily: Daily, control: str) -> tuple[str, list[str]]:
    variants = daily.variants
    if control not in variants:
        raise ExperimentError(
            daily.experiment_id,
            f"no variant named {control!r} (variants: {', '.join(variants) or 'none'}); "
            f"the control variant must be called {control!r}",
        )
    if len(variants) < 2:
        raise ExperimentError(daily.experiment_id, f"only {control!r} was exposed: nothing to compare")
    if not all(daily.totals[v].users for v in variants):
        raise ExperimentError(daily.experiment_id, "a variant has no analysed users (all multiple_variants)")
    return control, [v for v in variants if v != control]


def compare(daily: Daily, catalogue: Catalogue, control: str, treatment: str, metric: Metric) -> _Comparison:
    """The fixed-horizon tests (raw, and CUPED with a covariate) and the mSPRT of one
    treatment variant against control on one metric; degenerate data gives notes, not rows."""
    totals = daily.totals
    c, t = totals[control].sums(metric.name), totals[treatment].sums(metric.name)
    out = _Comparison()
    label = f"{treatment} vs {control}, {metric.name}"
    if min(c.n, t.n) < 2:
        out.notes.append(f"{label}: not analysed, {c.n} control and {t.n} treatment users with a value")
        return out
    raw = _attempt(lambda: _raw_test(metric, c, t, catalogue.alpha), f"{label}, {metric.raw_method}", out)
    cuped = None
    if metric.covariate:
        cuped = _attempt(lambda: st.cuped(c.joint(), t.joint(), catalogue.alpha), f"{label}, cuped", out)
    fixed = [(metric.raw_method, raw), ("cuped", cuped)]
    found = [(method, effect) for method, effect in fixed if effect is not None]
    headline = found[-1][0] if found else None
    out.results += [Result(treatment, metric, m, m == headline, c.n, t.n, e) for m, e in found]
    _sequential(daily, catalogue, (control, treatment), metric, out)
    return out


def _attempt(test: Callable[[], st.Effect], label: str, out: _Comparison) -> st.Effect | None:
    """The test's effect, or None and a note when the data cannot support it (e.g. no
    variance at all): the statistics raise ValueError exactly for such inputs."""
    try:
        return test()
    except ValueError as error:
        out.notes.append(f"{label}: not computed, {error}")
        return None


def _raw_test(metric: Metric, c: Sums, t: Sums, alpha: float) -> st.Effect:
    if metric.kind == "proportion":
        return st.two_proportions(round(c.sy), c.n, round(t.sy), t.n, alpha)
    return st.welch(c.moments(), t.moments(), alpha)


def _sequential(
    daily: Daily, catalogue: Catalogue, arms: tuple[str, str], metric: Metric, out: _Comparison
) -> None:
    """The mSPRT over the daily looks (policies.sequential): the running result per look
    into ``out.looks``, the last one as the msprt row."""
    chosen = _looks(daily, arms, metric.name, catalogue.sequential_min_users)
    if not chosen:
        out.notes.append(f"{arms[1]} vs {arms[0]}, {metric.name}, msprt: no look with varying values")
        return
    effects = st.sequential_looks([(c.moments(), t.moments()) for _, c, t in chosen], catalogue.alpha)
    out.looks = tuple((d, e) for (d, _, _), e in zip(chosen, effects, strict=True))
    _, c, t = chosen[-1]
    out.results.append(Result(arms[1], metric, "msprt", False, c.n, t.n, effects[-1]))


def _looks(
    daily: Daily, arms: tuple[str, str], metric: str, min_users: int
) -> list[tuple[dt.date, Sums, Sums]]:
    """The looks of the mSPRT: from the first date where both arms have ``min_users``
    users with a value (else only the last date), from the first one with any variance."""
    looks = [
        (date, groups[arms[0]].sums(metric), groups[arms[1]].sums(metric)) for date, groups in daily.looks
    ]
    usable = [(d, c, t) for d, c, t in looks if min(c.n, t.n) >= 2]
    enough = [i for i, (_, c, t) in enumerate(usable) if min(c.n, t.n) >= min_users]
    return list(dropwhile(_flat, usable[enough[0] if enough else -1 :]))


def _flat(look: tuple[dt.date, Sums, Sums]) -> bool:
    return look[1].moments().var == look[2].moments().var == 0


def adjust(results: Sequence[Result], catalogue: Catalogue) -> tuple[Result, ...]:
    """Holm and BH within each analysis (policies.multiple_comparisons); the headline
    family last, so a raw test that is its metric's headline takes the headline family's."""
    families = [
        [r for r in results if r.method in RAW_METHODS.values()],
        [r for r in results if r.method == "msprt"],
        [r for r in results if r.headline],
    ]
    adjusted: dict[tuple[str, str, str], tuple[float, float]] = {}
    for family in families:
        p_values = [r.effect.p_value for r in family]
        pairs = zip(st.holm(p_values), st.benjamini_hochberg(p_values), strict=True)
        adjusted.update(zip((r.key for r in family), pairs, strict=True))
    return tuple(_adjusted(r, *adjusted[r.key], catalogue) for r in results)


def _adjusted(result: Result, p_holm: float, p_bh: float, catalogue: Catalogue) -> Result:
    decisive = p_holm if catalogue.correction == "holm" else p_bh
    return replace(result, p_holm=p_holm, p_bh=p_bh, significant=decisive < catalogue.alpha)


# --- Spark: one pass of sums ---------------------------------------------------------------------


def source_exists(spark: SparkSession, lake: Lake) -> bool:
    return exists(spark, lake.gold(SOURCE))


def read_source(spark: SparkSession, lake: Lake) -> DataFrame:
    """Gold experiment_user_metrics, or an error saying how to build it."""
    if not source_exists(spark, lake):
        raise ExperimentError(None, f"gold {SOURCE} does not exist yet ({lake.gold(SOURCE)}): {BUILD_FIRST}")
    return spark.read.format("delta").load(lake.gold(SOURCE))


BUILD_FIRST = "run `reelpulse lake build` first"


def daily_sums(users: DataFrame, catalogue: Catalogue) -> DataFrame:
    """One aggregation of the per-user rows: per experiment, variant and exposure date the
    analysed and excluded users, and per metric ``<metric>__n``, ``__sy``, ``__syy`` (and
    with a covariate ``__sx``, ``__sxx``, ``__sxy``) over the analysed users with a value."""
    from pyspark.sql import functions as F

    excluded = F.coalesce(F.col("multiple_variants"), F.lit(False))
    dtypes = dict(users.dtypes)
    aggregates = [
        F.count(F.when(~excluded, F.lit(1))).alias("users"),
        F.count(F.when(excluded, F.lit(1))).alias("excluded"),
    ]
    for metric in catalogue.metrics:
        aggregates += _metric_sums(metric, dtypes, ~excluded)
    return users.groupBy("experiment_id", "variant", "exposure_date").agg(*aggregates)


def _metric_sums(metric: Metric, dtypes: Mapping[str, str], analysed: Column) -> list[Column]:
    from pyspark.sql import functions as F

    within = analysed & F.col(metric.column).isNotNull()
    y = metric.column
    products: dict[str, list[str]] = {"sy": [y], "syy": [y, y]}
    if metric.covariate:
        x = metric.covariate
        products |= {"sx": [x], "sxx": [x, x], "sxy": [x, y]}
    count = F.count(F.when(within, F.lit(1))).alias(f"{metric.name}{SEP}n")
    return [count, *(s for name, f in products.items() for s in _sum(within, f, dtypes, metric.name, name))]


def _sum(
    within: Column, factors: list[str], dtypes: Mapping[str, str], metric: str, name: str
) -> list[Column]:
    """sum(product of the factors) over ``within``, a null factor as 0 (a missing
    covariate). Integral factors: the long product split at bit 31 into two long sums
    (``_hi``, ``_lo``): exact, and nearly as fast as doubles; a product beyond a long fails the job
    (ANSI mode), never wraps. Otherwise one double sum."""
    from pyspark.sql import functions as F

    integral = all(dtypes[c] in INTEGRAL for c in factors)
    kind = "long" if integral else "double"
    values = [F.coalesce(F.col(c).cast(kind), F.lit(0).cast(kind)) for c in factors]
    product = values[0] if len(values) == 1 else values[0] * values[1]
    alias = f"{metric}{SEP}{name}"
    if not integral:
        return [F.sum(F.when(within, product)).alias(alias)]
    high, low = F.shiftright(product, SPLIT), product.bitwiseAND(2**SPLIT - 1)
    return [F.sum(F.when(within, high)).alias(f"{alias}_hi"), F.sum(F.when(within, low)).alias(f"{alias}_lo")]


def collect_sums(frame: DataFrame, catalogue: Catalogue) -> dict[str, Daily]:
    """The aggregated rows on the driver (experiments x variants x dates), as :class:`Daily`."""
    days: dict[str, dict[dt.date, dict[str, Group]]] = {}
    for row in frame.collect():
        values = row.asDict()
        dates = days.setdefault(values["experiment_id"], {})
        dates.setdefault(values["exposure_date"], {})[values["variant"]] = _group(values, catalogue)
    return {experiment: Daily(experiment, dates) for experiment, dates in sorted(days.items())}


def _group(values: Mapping[str, Any], catalogue: Catalogue) -> Group:
    sums = {m.name: _sums(values, m.name) for m in catalogue.metrics}
    return Group(int(values["users"]), int(values["excluded"]), sums)


def _sums(values: Mapping[str, Any], metric: str) -> Sums:
    return Sums(int(values[f"{metric}{SEP}n"]), *(_number(values, f"{metric}{SEP}{s}") for s in SUMS))


def _number(values: Mapping[str, Any], alias: str) -> float:
    """A sum as Python: an exact one from its two halves as an int, a double as it is
    (absent, or null over no rows: 0)."""
    if f"{alias}_hi" in values:
        return (values[f"{alias}_hi"] or 0) * 2**SPLIT + (values[f"{alias}_lo"] or 0)
    return float(values.get(alias) or 0.0)


# --- the results table ---------------------------------------------------------------------------


def results_schema(contract: Mapping[str, Any]) -> str:
    """The Spark DDL schema of experiment_results, from its contract."""
    columns = contract["tables"][RESULTS]["columns"]
    return ", ".join(f"`{c['name']}` {c['type']}" for c in columns)


def result_rows(analysis: Analysis, computed_at: dt.datetime) -> list[dict[str, Any]]:
    """The experiment's rows of experiment_results, by column name."""
    return [_row(analysis, r, computed_at) for r in analysis.results]


def _row(analysis: Analysis, result: Result, computed_at: dt.datetime) -> dict[str, Any]:
    e, m = result.effect, result.metric
    return {
        "experiment_id": analysis.experiment_id, "variant": result.variant, "metric": m.name,
        "method": result.method, "role": m.role, "direction": m.direction, "headline": result.headline,
        "n_control": result.n_control, "n_treatment": result.n_treatment,
        "control_mean": e.control_mean, "treatment_mean": e.treatment_mean,
        "absolute_lift": e.absolute_lift,
        "absolute_ci_low": e.absolute_ci[0], "absolute_ci_high": e.absolute_ci[1],
        "relative_lift": _finite(e.relative_lift), "relative_ci_low": _finite(e.relative_ci[0]),
        "relative_ci_high": _finite(e.relative_ci[1]),
        "p_value": e.p_value, "p_holm": result.p_holm, "p_bh": result.p_bh,
        "significant": result.significant, "outcome": result.outcome,
        "variance_reduction": e.variance_reduction,
        "alpha": analysis.alpha, "srm_p_value": analysis.srm.p_value, "srm_failed": analysis.srm.failed,
        "excluded_control": analysis.excluded[analysis.control],
        "excluded_treatment": analysis.excluded[result.variant],
        "data_through": analysis.data_through, "computed_at": computed_at,
    }  # fmt: skip


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def results_frame(spark: SparkSession, analyses: Iterable[Analysis], computed_at: dt.datetime) -> DataFrame:
    contract = load_contract()
    names = [c["name"] for c in contract["tables"][RESULTS]["columns"]]
    rows = [tuple(row[n] for n in names) for a in analyses for row in result_rows(a, computed_at)]
    return spark.createDataFrame(rows, results_schema(contract))


def _keep_others(spark: SparkSession, lake: Lake, frame: DataFrame, replaced: list[str]) -> DataFrame:
    """``frame`` plus the published rows of every experiment not in ``replaced``."""
    from pyspark.sql import functions as F

    path = lake.gold(RESULTS)
    if not exists(spark, path):
        return frame
    published = spark.read.format("delta").load(path)
    if published.dtypes != frame.dtypes:
        log.warning("experiments: %s has another schema; it keeps only this run's experiments", RESULTS)
        return frame
    return frame.unionByName(published.where(~F.col("experiment_id").isin(replaced)))


def gated(gate: quality.Gate, *extra: Mapping[str, Any]) -> Publish:
    """Publish through ``gate``: validated against the contract's expectations (and
    ``extra`` ones, such as the pipeline's volume check), then overwritten."""
    expectations = [*quality.contract_expectations(load_contract(), RESULTS), *(dict(e) for e in extra)]

    def publish(name: str, frame: DataFrame) -> None:
        gate.publish_overwrite("gold", name, frame, [], expectations=expectations)

    return publish


# --- the job -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One experiment's analysis and its HTML page (None for a lake not on local disk)."""

    analysis: Analysis
    html: str | None


def run(
    settings: Settings,
    spark: SparkSession | None = None,
    *,
    experiments: Iterable[str] | None = None,
    publish: Publish | None = None,
    catalogue: Catalogue | None = None,
) -> dict[str, Report]:
    """Analyse the experiments (default all) of gold experiment_user_metrics, publish
    their rows of experiment_results (``publish``; default: through a quality gate of its
    own) and render their reports. A run over some experiments keeps the others' rows."""
    spark = spark or spark_support.session(settings, "reelpulse-experiments")
    if publish is not None:
        return _run(settings, spark, experiments, publish, catalogue or Catalogue.load())
    gate = quality.Gate(settings, spark)
    try:
        return _run(settings, spark, experiments, gated(gate), catalogue or Catalogue.load())
    finally:
        gate.build_docs()


def _run(
    settings: Settings,
    spark: SparkSession,
    experiments: Iterable[str] | None,
    publish: Publish,
    catalogue: Catalogue,
) -> dict[str, Report]:
    lake = Lake(settings.lake_dir)
    wanted = None if experiments is None else sorted(set(experiments))
    daily = _sums_of(spark, lake, wanted, catalogue)
    analyses = {e: analyze(d, catalogue) for e, d in daily.items()}
    frame = results_frame(spark, analyses.values(), dt.datetime.now(dt.UTC))
    publish(RESULTS, frame if wanted is None else _keep_others(spark, lake, frame, list(analyses)))
    rows = sum(len(a.results) for a in analyses.values())
    log.info("experiments: %d analysed, %d result rows published", len(analyses), rows)
    pages = write_reports(spark, lake, analyses.values(), catalogue)
    return {e: Report(a, pages.get(e)) for e, a in analyses.items()}


def _sums_of(
    spark: SparkSession, lake: Lake, wanted: list[str] | None, catalogue: Catalogue
) -> dict[str, Daily]:
    from pyspark.sql import functions as F

    users = read_source(spark, lake)
    selected = users if wanted is None else users.where(F.col("experiment_id").isin(wanted))
    daily = collect_sums(daily_sums(selected, catalogue), catalogue)
    missing = sorted(set(wanted or ()) - set(daily))
    if missing:
        known = sorted(r[0] for r in users.select("experiment_id").distinct().collect())
        raise unknown_experiment(missing, known)
    return daily


def unknown_experiment(missing: Sequence[str], known: Sequence[str]) -> ExperimentError:
    listed = ", ".join(known) if known else "none yet"
    return ExperimentError(None, f"unknown experiment {', '.join(missing)}: gold {SOURCE} has {listed}")


# --- DuckDB: what the lake holds, without Spark ----------------------------------------------------


def exposures(lake_dir: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Exposed users per experiment and variant (DuckDB over gold)."""
    from batch import sql as lake_sql

    _require_source(lake_dir)
    return lake_sql.query(lake_dir, EXPOSURES_SQL)


def _require_source(lake_dir: str) -> None:
    from batch import sql as lake_sql

    if f"gold.{SOURCE}" not in lake_sql.lake_tables(lake_dir):
        raise ExperimentError(None, f"gold {SOURCE} does not exist yet in {lake_dir}: {BUILD_FIRST}")


def check_request(lake_dir: str, experiment_id: str | None) -> None:
    """Fail fast, before Spark starts: gold experiment_user_metrics must exist and hold
    ``experiment_id``. A lake not on local disk is checked by :func:`run` instead."""
    try:
        local_path(lake_dir)
    except LakeLocationError:
        return
    _require_source(lake_dir)
    if experiment_id is not None:
        known = sorted({row[0] for row in exposures(lake_dir)[1]})
        if experiment_id not in known:
            raise unknown_experiment([experiment_id], known)


# --- the reports ---------------------------------------------------------------------------------


def report_dir(lake: Lake) -> Path | None:
    """Where the HTML reports go; None (no reports) for a lake not on local disk."""
    try:
        return local_path(lake.reports(REPORTS))
    except LakeLocationError:
        log.info("experiments: no HTML reports for a lake at %s (local paths only)", lake.root)
        return None


def page_name(experiment_id: str) -> str:
    """The report's file name: the id with anything but letters, digits, ``.-_`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", experiment_id).lstrip(".") + ".html"


def write_reports(
    spark: SparkSession, lake: Lake, analyses: Iterable[Analysis], catalogue: Catalogue
) -> dict[str, str]:
    """One page per analysed experiment and the index of every published one; returns
    each experiment's page path."""
    directory = report_dir(lake)
    if directory is None:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    analyses = list(analyses)
    pages = {
        a.experiment_id: _write(directory / page_name(a.experiment_id), render(a, catalogue))
        for a in analyses
    }
    _write(directory / "index.html", render_index(_published_primaries(spark, lake, analyses)))
    return pages


def _published_primaries(spark: SparkSession, lake: Lake, analyses: list[Analysis]) -> list[dict[str, Any]]:
    """The headline rows of primary metrics of every published experiment (this run's
    when the table is not in the lake, e.g. published elsewhere)."""
    if not exists(spark, lake.gold(RESULTS)):
        now = dt.datetime.now(dt.UTC)
        rows = [row for a in analyses for row in result_rows(a, now)]
        return [row for row in rows if row["headline"] and row["role"] == "primary"]
    published = spark.read.format("delta").load(lake.gold(RESULTS)).where("headline AND role = 'primary'")
    return [row.asDict() for row in published.collect()]


def _write(path: Path, text: str) -> str:
    """Replace ``path`` whole (a reader never sees half a page)."""
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return str(path)


def _template() -> Any:
    from jinja2 import Environment

    environment = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(TEMPLATE.read_text(encoding="utf-8"))


def render(analysis: Analysis, catalogue: Catalogue) -> str:
    """The experiment's self-contained HTML page."""
    return str(_template().render(page="experiment", e=_page(analysis, catalogue)))


def render_index(primary_rows: Sequence[Mapping[str, Any]]) -> str:
    """The index: every published experiment, its SRM verdict and its primary metrics."""
    experiments: dict[str, dict[str, Any]] = {}
    for row in sorted(primary_rows, key=lambda r: (r["experiment_id"], r["variant"], r["metric"])):
        entry = experiments.setdefault(row["experiment_id"], _index_entry(row))
        entry["primaries"].append(_index_row(row))
    return str(_template().render(page="index", experiments=list(experiments.values())))


def _index_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["experiment_id"], "href": page_name(row["experiment_id"]), "srm_failed": row["srm_failed"],
        "srm_p": p_text(row["srm_p_value"]), "data_through": row["data_through"].isoformat(), "primaries": [],
    }  # fmt: skip


def _index_row(row: Mapping[str, Any]) -> dict[str, Any]:
    interval = _interval(row["relative_ci_low"], row["relative_ci_high"], percent=True)
    return {
        "variant": row["variant"], "metric": row["metric"], "method": row["method"],
        "lift": f"{percent_text(row['relative_lift'])} {interval}", "p_holm": p_text(row["p_holm"]),
        "outcome": row["outcome"],
    }  # fmt: skip


def _page(analysis: Analysis, catalogue: Catalogue) -> dict[str, Any]:
    return {
        "id": analysis.experiment_id, "data_through": analysis.data_through.isoformat(),
        "computed_at": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", "alpha": analysis.alpha,
        "confidence": f"{1 - analysis.alpha:.0%}", "correction": catalogue.correction,
        "srm": _srm_view(analysis), "groups": _groups_view(analysis),
        "comparisons": [_comparison_view(analysis, variant) for variant in analysis.treatments],
        "notes": list(analysis.notes),
    }  # fmt: skip


def _srm_view(analysis: Analysis) -> dict[str, Any]:
    srm = analysis.srm
    rows = [
        {"variant": v, "observed": f"{o:,}", "expected": f"{e:,.1f}", "difference": f"{(o - e) / e:+.2%}"}
        for v, o, e in zip(analysis.variants, srm.observed, srm.expected, strict=True)
    ]
    return {
        "failed": srm.failed,
        "p": p_text(srm.p_value),
        "threshold": srm.threshold,
        "chi2": f"{srm.statistic:.2f}",
        "rows": rows,
        "message": srm.message,
    }


def _groups_view(analysis: Analysis) -> list[dict[str, str]]:
    total = sum(analysis.shares)
    return [
        {
            "variant": v,
            "users": f"{analysis.users[v]:,}",
            "excluded": f"{analysis.excluded[v]:,}",
            "share": f"{s / total:.1%}",
        }
        for v, s in zip(analysis.variants, analysis.shares, strict=True)
    ]


def _comparison_view(analysis: Analysis, variant: str) -> dict[str, Any]:
    results = [r for r in analysis.results if r.variant == variant]
    headline = [r for r in results if r.headline]
    primaries = [r.metric for r in headline if r.metric.role == "primary"]
    cumulative = [
        {"metric": m.name, "svg": _cumulative_svg(analysis.looks[variant, m.name], m, analysis.alpha)}
        for m in primaries
        if (variant, m.name) in analysis.looks
    ]
    return {
        "variant": variant,
        "rows": [_result_view(r) for r in results if r.method != "msprt"],
        "sequential": [_result_view(r) for r in results if r.method == "msprt"],
        "forest": _forest_svg(headline, variant, analysis.alpha),
        "cumulative": cumulative,
    }


def _result_view(r: Result) -> dict[str, Any]:
    e = r.effect
    return {
        "metric": r.metric.name, "role": r.metric.role, "direction": r.metric.direction, "method": r.method,
        "headline": r.headline, "n": f"{r.n_control:,} / {r.n_treatment:,}",
        "control": number(e.control_mean), "treatment": number(e.treatment_mean),
        "absolute": f"{number(e.absolute_lift)} {_interval(*e.absolute_ci)}",
        "relative": f"{percent_text(e.relative_lift)} {_interval(*e.relative_ci, percent=True)}",
        "p": p_text(e.p_value), "p_holm": p_text(r.p_holm), "p_bh": p_text(r.p_bh),
        "significant": r.significant, "outcome": r.outcome,
        "variance_reduction": "" if e.variance_reduction is None else f"{e.variance_reduction:.1%}",
    }  # fmt: skip


def number(value: float | None) -> str:
    """Four significant digits; whole numbers with separators from 1,000 up."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def percent_text(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.2%}"


def p_text(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _interval(low: float | None, high: float | None, *, percent: bool = False) -> str:
    show = percent_text if percent else number
    return f"[{show(low)}, {show(high)}]"


# --- plots: matplotlib to inline SVG -------------------------------------------------------------

COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "inconclusive": "#57606a"}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Figure) -> Any:
    """The figure as an inline ``<svg>`` element, marked safe for the template (text is
    drawn as paths, so no value reaches the markup as text)."""
    import matplotlib
    from markupsafe import Markup

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "reelpulse"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return Markup(text[text.index("<svg") :])


def _forest_svg(results: Sequence[Result], variant: str, alpha: float) -> Any:
    """Relative lift and interval per metric, with the zero line."""
    shown = [
        r for r in results if all(math.isfinite(v) for v in (r.effect.relative_lift, *r.effect.relative_ci))
    ]
    figure = _figure(7.5, 0.45 * len(shown) + 1.3)
    axes = figure.subplots()
    for i, r in enumerate(reversed(shown)):
        lift, (low, high) = r.effect.relative_lift * 100, (b * 100 for b in r.effect.relative_ci)
        axes.errorbar(
            [lift], [i], xerr=[[lift - low], [high - lift]], fmt="o", capsize=4, color=COLOURS[r.outcome]
        )
    axes.axvline(0, color="#8c959f", linestyle="--", linewidth=1)
    axes.set_yticks(range(len(shown)), [f"{r.metric.name} ({r.method})" for r in reversed(shown)])
    axes.set_xlabel(f"relative lift of {variant} vs control, % ({1 - alpha:.0%} interval)")
    return _svg(figure)


def _cumulative_svg(looks: Sequence[Look], metric: Metric, alpha: float) -> Any:
    """Cumulative relative lift per daily look, with the always-valid interval band."""
    import numpy as np

    dates = np.array([d for d, _ in looks], dtype="datetime64[D]")
    lifts = [e.relative_lift * 100 for _, e in looks]
    low, high = ([e.relative_ci[i] * 100 for _, e in looks] for i in (0, 1))
    figure = _figure(7.5, 3.2)
    axes = figure.subplots()
    axes.fill_between(
        dates, low, high, color="#54aeff", alpha=0.3, label=f"always-valid {1 - alpha:.0%} interval"
    )
    axes.plot(dates, lifts, marker="o", color="#0969da", label="cumulative relative lift")
    axes.axhline(0, color="#8c959f", linestyle="--", linewidth=1)
    axes.set_ylabel(f"{metric.name}, %")
    axes.set_xlabel("exposure date (users exposed up to the date)")
    axes.legend(loc="best", fontsize="small")
    figure.autofmt_xdate()
    return _svg(figure)
