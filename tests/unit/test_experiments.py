"""A/B experiment reports on a hand-built gold experiment_user_metrics: the Spark job's sums
and results against ``experiment_stats``, scipy and exact sums computed per user here; the
exclusions; an SRM failure in the table and the HTML; a planted effect found and covered;
the A/A false-positive rate of the primary metric over re-randomizations of one dataset
through the pure analysis; the quality gate; the CLI's errors.

The per-user rows are drawn with numpy (seeded) in the columns and types of gold.yml's
contract of experiment_user_metrics and written as that Delta table; the truth (which
users are excluded, the planted lift) is known here. ``pytest -s`` prints the A/A rate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from batch import experiment_stats as st
from batch import experiments, gold
from batch.experiments import Catalogue, Daily, ExperimentError, Group, Sums
from batch.lake import Lake
from batch.quality import Gate, QualityGateFailed
from reelpulse.cli import app
from reelpulse.settings import Settings

START = dt.date(2025, 3, 3)
DAYS = 12  # exposure dates START .. START + 11
AS_OF = START + dt.timedelta(days=DAYS)  # the newest event: day 1/7 observability follows from it
LIFT = 0.15  # planted on the treatment's watch time of LIFTED
LIFTED, SRM = "exp-lift", "exp-srm"
SIZES = {LIFTED: (2500, 2500), SRM: (1000, 800)}
MULTIPLE = 40  # users of LIFTED exposed to both variants: excluded
CATALOGUE = Catalogue.load()
PRIMARY = next(m for m in CATALOGUE.metrics if m.role == "primary")
COLUMNS = [(c["name"], c["type"]) for c in gold.load_contract()["tables"][experiments.SOURCE]["columns"]]


def tight(expected: Any) -> Any:
    return pytest.approx(expected, rel=1e-6, abs=1e-12)


# --- per-user data ---------------------------------------------------------------------------------


def user_id(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def cohort(
    rng: np.random.Generator, experiment: str, variant: str, ids: list[str], lift: float
) -> pd.DataFrame:
    """Users of one variant: correlated pre/post measures, the lift on watch time."""
    n = len(ids)
    exposure = [START + dt.timedelta(days=int(d)) for d in rng.integers(0, DAYS, n)]
    pre_watch = rng.gamma(2.0, 2e6, n).astype(np.int64)
    watch = ((0.7 * pre_watch + rng.gamma(2.0, 1.5e6, n)) * (1 + lift)).astype(np.int64)
    watch[rng.random(n) < 0.1] = 0  # nothing played: no rebuffer ratio
    rebuffer = (watch * rng.beta(1, 60, n)).astype(np.int64)
    pre_rebuffer = (pre_watch * rng.beta(1, 60, n)).astype(np.int64)
    pre_sessions = rng.poisson(4, n)
    pre_failures = rng.poisson(0.3, n)
    pre_active = rng.integers(0, 15, n)
    d1 = np.array([e + dt.timedelta(days=2) <= AS_OF for e in exposure])
    d7 = np.array([e + dt.timedelta(days=8) <= AS_OF for e in exposure])
    return pd.DataFrame({
        "experiment_id": experiment, "variant": variant, "user_id": ids,
        "first_exposed_at": [dt.datetime.combine(e, dt.time(9), dt.UTC) for e in exposure],
        "exposure_date": exposure, "exposure_count": rng.integers(1, 4, n), "multiple_variants": False,
        "sessions": rng.poisson(1 + 0.8 * pre_sessions), "watch_time_ms": watch,
        "play_failures": rng.poisson(0.2 + 0.3 * pre_failures), "rebuffer_ms": rebuffer,
        "rebuffer_ratio": ratio(rebuffer, watch),
        "active_days": np.minimum(14, rng.binomial(14, (pre_active + 1) / 16)),
        "retained_d1": observed(rng.random(n) < 0.4, d1), "retained_d7": observed(rng.random(n) < 0.6, d7),
        "pre_sessions": pre_sessions, "pre_watch_time_ms": pre_watch, "pre_play_failures": pre_failures,
        "pre_rebuffer_ms": pre_rebuffer, "pre_rebuffer_ratio": ratio(pre_rebuffer, pre_watch),
        "pre_active_days": pre_active, "d1_observable": d1, "d7_observable": d7, "window_complete": False,
    })  # fmt: skip


def ratio(rebuffer: np.ndarray, watch: np.ndarray) -> list[float | None]:
    total = rebuffer + watch
    return [float(r / t) if t else None for r, t in zip(rebuffer, total, strict=True)]


def observed(active: np.ndarray, observable: np.ndarray) -> list[bool | None]:
    """gold's rule: true when seen active, false only when the days are observable."""
    return [True if a else (False if o else None) for a, o in zip(active, observable, strict=True)]


def population(seed: int = 20250303) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for experiment, (n_control, n_treatment) in SIZES.items():
        lift = LIFT if experiment == LIFTED else 0.0
        for variant, n, planted in (("control", n_control, 0.0), ("treatment", n_treatment, lift)):
            parts.append(
                cohort(rng, experiment, variant, [user_id(experiment, variant, i) for i in range(n)], planted)
            )
    both = [user_id(LIFTED, "both", i) for i in range(MULTIPLE)]
    for variant in ("control", "treatment"):  # huge values: any leak into the analysis shows
        twice = cohort(rng, LIFTED, variant, both, 0.0).assign(multiple_variants=True)
        parts.append(twice.assign(watch_time_ms=twice.watch_time_ms * 1000))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def users() -> pd.DataFrame:
    return population()


@pytest.fixture(scope="module")
def lake(spark: Any, lake_settings: Settings, users: pd.DataFrame) -> Lake:
    """The users as gold experiment_user_metrics, in the contract's columns and types."""
    lake = Lake(lake_settings.lake_dir)
    values = users[[name for name, _ in COLUMNS]].astype(object).where(users.notna(), None)
    rows = [tuple(native(v) for v in row) for row in values.itertuples(index=False)]
    schema = ", ".join(f"`{name}` {kind}" for name, kind in COLUMNS)
    spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(
        lake.gold(experiments.SOURCE)
    )
    return lake


def native(value: Any) -> Any:
    """A value as plain Python, the types Spark takes."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value.item() if isinstance(value, np.generic) else value


@pytest.fixture(scope="module")
def reports(spark: Any, lake_settings: Settings, lake: Lake) -> dict[str, experiments.Report]:
    return experiments.run(lake_settings, spark)


@pytest.fixture(scope="module")
def table(spark: Any, lake: Lake, reports: dict) -> pd.DataFrame:
    """The published experiment_results, one row per (experiment, variant, metric, method)."""
    frame = spark.read.format("delta").load(lake.gold(experiments.RESULTS))
    return pd.DataFrame([r.asDict() for r in frame.collect()]).set_index(
        ["experiment_id", "metric", "method"]
    )


def arms(users: pd.DataFrame, experiment: str, column: str, covariate: str | None = None) -> list[Any]:
    """Control and treatment values of the analysed users with a value (covariate: null as 0)."""
    out = []
    for variant in ("control", "treatment"):
        part = users[
            (users.experiment_id == experiment) & (users.variant == variant) & ~users.multiple_variants
        ]
        part = part[part[column].notna()]
        y = part[column].astype(float).to_numpy()
        out.append((y, part[covariate].fillna(0).astype(float).to_numpy()) if covariate else y)
    return out


# --- (a) the Spark sums and the results equal the statistics on the per-user arrays -----------


def exact_sums(part: pd.DataFrame, column: str, covariate: str | None) -> tuple[int, ...]:
    """n, sum(y), sum(y^2), sum(x), sum(x^2), sum(x*y) in Python integers: exact."""
    part = part[part[column].notna()]
    y = [int(v) for v in part[column]]
    x = [int(v) if v == v and v is not None else 0 for v in part[covariate]] if covariate else [0] * len(y)
    return (
        len(y),
        sum(y),
        sum(v * v for v in y),
        sum(x),
        sum(v * v for v in x),
        sum(a * b for a, b in zip(x, y, strict=True)),
    )


def test_spark_sums_are_exact_per_date_and_variant(spark: Any, lake: Lake, users: pd.DataFrame) -> None:
    frame = spark.read.format("delta").load(lake.gold(experiments.SOURCE))
    daily = experiments.collect_sums(experiments.daily_sums(frame, CATALOGUE), CATALOGUE)
    assert set(daily) == {LIFTED, SRM}
    integral = [m for m in CATALOGUE.metrics if m.column != "rebuffer_ratio"]
    for (experiment, date, variant), part in users.groupby(["experiment_id", "exposure_date", "variant"]):
        group = daily[experiment].days[date][variant]
        analysed = part[~part.multiple_variants]
        assert (group.users, group.excluded) == (len(analysed), int(part.multiple_variants.sum()))
        for metric in integral:
            got = group.sums(metric.name)
            assert (got.n, got.sy, got.syy, got.sx, got.sxx, got.sxy) == exact_sums(
                analysed, metric.column, metric.covariate
            )
        ratio_sums = group.sums("rebuffer_ratio")
        y, x = arms_of(analysed, "rebuffer_ratio", "pre_rebuffer_ratio")
        assert (ratio_sums.n, ratio_sums.sy, ratio_sums.sxy) == (len(y), tight(y.sum()), tight(x @ y))


def arms_of(part: pd.DataFrame, column: str, covariate: str) -> tuple[np.ndarray, np.ndarray]:
    part = part[part[column].notna()]
    return part[column].astype(float).to_numpy(), part[covariate].fillna(0).astype(float).to_numpy()


def test_welch_rows_equal_experiment_stats_and_scipy(table: pd.DataFrame, users: pd.DataFrame) -> None:
    for metric in (m for m in CATALOGUE.metrics if m.kind == "mean"):
        control, treatment = arms(users, LIFTED, metric.column)
        row = table.loc[LIFTED, metric.name, "welch"]
        ours = st.welch(st.Moments.of(control), st.Moments.of(treatment))
        ref = stats.ttest_ind(treatment, control, equal_var=False)
        ci = ref.confidence_interval(0.95)
        assert (row.n_control, row.n_treatment) == (control.size, treatment.size)
        assert (row.control_mean, row.treatment_mean) == (tight(control.mean()), tight(treatment.mean()))
        assert row.absolute_lift == tight(ours.absolute_lift)
        assert (row.absolute_ci_low, row.absolute_ci_high) == (tight(ci.low), tight(ci.high))
        assert row.p_value == tight(ref.pvalue)
        assert (row.relative_ci_low, row.relative_ci_high) == (
            tight(ours.relative_ci[0]),
            tight(ours.relative_ci[1]),
        )


def test_cuped_rows_equal_joint_of_the_arrays(table: pd.DataFrame, users: pd.DataFrame) -> None:
    for metric in (m for m in CATALOGUE.metrics if m.covariate):
        (y_c, x_c), (y_t, x_t) = arms(users, LIFTED, metric.column, metric.covariate)
        ours = st.cuped(st.Joint.of(y_c, x_c), st.Joint.of(y_t, x_t))
        row = table.loc[LIFTED, metric.name, "cuped"]
        assert row.headline
        assert not table.loc[LIFTED, metric.name, "welch"].headline
        assert (row.control_mean, row.treatment_mean, row.p_value) == (
            tight(ours.control_mean), tight(ours.treatment_mean), tight(ours.p_value),
        )  # fmt: skip
        assert (row.absolute_ci_low, row.absolute_ci_high) == (
            tight(ours.absolute_ci[0]),
            tight(ours.absolute_ci[1]),
        )
        assert row.variance_reduction == tight(ours.variance_reduction)


def test_proportion_rows_equal_two_proportions(table: pd.DataFrame, users: pd.DataFrame) -> None:
    for metric in (m for m in CATALOGUE.metrics if m.kind == "proportion"):
        control, treatment = arms(users, LIFTED, metric.column)
        ours = st.two_proportions(int(control.sum()), control.size, int(treatment.sum()), treatment.size)
        row = table.loc[LIFTED, metric.name, "two_proportions"]
        assert row.headline
        assert (row.control_mean, row.absolute_lift, row.p_value) == (
            tight(ours.control_mean), tight(ours.absolute_lift), tight(ours.p_value),
        )  # fmt: skip


def test_msprt_row_equals_sequential_looks_over_the_daily_cohorts(
    table: pd.DataFrame, users: pd.DataFrame
) -> None:
    part = users[(users.experiment_id == LIFTED) & ~users.multiple_variants]
    looks = []
    for day in range(DAYS):
        seen = part[part.exposure_date <= START + dt.timedelta(days=day)]
        arm = [
            seen[seen.variant == v].watch_time_ms.astype(float).to_numpy() for v in ("control", "treatment")
        ]
        if min(a.size for a in arm) >= CATALOGUE.sequential_min_users:
            looks.append((st.Moments.of(arm[0]), st.Moments.of(arm[1])))
    final = st.sequential_looks(looks)[-1]
    row = table.loc[LIFTED, PRIMARY.name, "msprt"]
    assert (row.p_value, row.absolute_ci_low, row.absolute_ci_high) == (
        tight(final.p_value), tight(final.absolute_ci[0]), tight(final.absolute_ci[1]),
    )  # fmt: skip


def test_holm_and_bh_over_the_experiments_headline_rows(table: pd.DataFrame) -> None:
    headline = table.loc[LIFTED].query("headline")
    assert len(headline) == len(CATALOGUE.metrics)
    assert list(headline.p_holm) == tight(st.holm(list(headline.p_value)))
    assert list(headline.p_bh) == tight(st.benjamini_hochberg(list(headline.p_value)))
    assert (headline.significant == (headline.p_holm < 0.05)).all()


def test_the_table_matches_its_contract(spark: Any, lake: Lake, reports: dict) -> None:
    contract = experiments.load_contract()["tables"][experiments.RESULTS]
    frame = spark.read.format("delta").load(lake.gold(experiments.RESULTS))
    assert frame.dtypes == [(c["name"], c["type"]) for c in contract["columns"]]
    ordered = next(e for e in contract["expectations"] if "expect_table_columns_to_match_ordered_list" in e)
    assert ordered["expect_table_columns_to_match_ordered_list"]["column_list"] == frame.columns
    assert frame.groupBy(*contract["key"]).count().where("count > 1").isEmpty()
    assert frame.count() == sum(len(r.analysis.results) for r in reports.values())


# --- (b) exclusions --------------------------------------------------------------------------------


def test_multiple_variant_users_are_excluded_and_counted(table: pd.DataFrame, reports: dict) -> None:
    row = table.loc[LIFTED, PRIMARY.name, "welch"]
    assert (row.n_control, row.n_treatment) == SIZES[LIFTED]
    assert (row.excluded_control, row.excluded_treatment) == (MULTIPLE, MULTIPLE)
    assert dict(reports[LIFTED].analysis.excluded) == {"control": MULTIPLE, "treatment": MULTIPLE}
    assert dict(reports[SRM].analysis.excluded) == {"control": 0, "treatment": 0}


def test_unobservable_retention_and_nothing_played_are_left_out(
    table: pd.DataFrame, users: pd.DataFrame
) -> None:
    for metric in ("retained_d1", "retained_d7", "rebuffer_ratio"):
        control, treatment = arms(users, LIFTED, metric)
        assert control.size < SIZES[LIFTED][0]  # some users have no value
        row = table.loc[LIFTED, metric, "welch" if metric == "rebuffer_ratio" else "two_proportions"]
        assert (row.n_control, row.n_treatment) == (control.size, treatment.size)


# --- (c) sample ratio mismatch ---------------------------------------------------------------------


def test_srm_failure_is_in_the_table_and_shouts_in_the_report(table: pd.DataFrame, reports: dict) -> None:
    assert table.loc[SRM].srm_failed.all()
    assert not table.loc[LIFTED].srm_failed.any()
    assert table.loc[SRM].srm_p_value.iloc[0] == tight(stats.chisquare([1000, 800]).pvalue)
    page = Path(reports[SRM].html).read_text()
    assert "do not trust these results" in page
    assert "1,000" in page
    assert "800" in page
    assert "900.0" in page
    assert "do not trust" not in Path(reports[LIFTED].html).read_text()


def test_an_allocation_override_changes_the_expected_shares(users: pd.DataFrame) -> None:
    part = users[users.experiment_id == SRM]
    uneven = Catalogue(CATALOGUE.metrics, allocations={SRM: {"control": 5, "treatment": 4}})
    result = experiments.analyze(daily_of(part, part.variant.to_numpy(), uneven), uneven)
    assert not result.srm.failed
    assert result.srm.expected == (tight(1000.0), tight(800.0))


# --- (d) a planted effect; the A/A false-positive rate ----------------------------------------------


def test_a_planted_lift_is_detected_and_covered(table: pd.DataFrame) -> None:
    for method in ("cuped", "welch", "msprt"):
        row = table.loc[LIFTED, PRIMARY.name, method]
        assert row.relative_ci_low <= LIFT <= row.relative_ci_high, method
        assert row.significant, method
        assert row.outcome == "better", method
    assert not table.loc[SRM, PRIMARY.name, "cuped"].significant


def daily_of(part: pd.DataFrame, variants: np.ndarray, catalogue: Catalogue) -> Daily:
    """The sums :func:`experiments.daily_sums` gives, computed here with numpy."""
    analysed = part.assign(_variant=variants)[~part.multiple_variants.to_numpy()]
    days: dict[dt.date, dict[str, Group]] = {}
    for (date, variant), group in analysed.groupby(["exposure_date", "_variant"]):
        sums = {m.name: numpy_sums(group, m.column, m.covariate) for m in catalogue.metrics}
        days.setdefault(date, {})[variant] = Group(len(group), 0, sums)
    return Daily(str(part.experiment_id.iloc[0]), days)


def numpy_sums(part: pd.DataFrame, column: str, covariate: str | None) -> Sums:
    present = part[part[column].notna()]
    y = present[column].astype(float).to_numpy()
    x = present[covariate].fillna(0).astype(float).to_numpy() if covariate else np.zeros_like(y)
    return Sums(y.size, y.sum(), y @ y, x.sum(), x @ x, x @ y)


def test_aa_false_positive_rate_of_the_primary_metric(users: pd.DataFrame) -> None:
    part = users[(users.experiment_id == LIFTED) & ~users.multiple_variants]
    primary_only = Catalogue((PRIMARY,))
    rng, runs = np.random.default_rng(7), 400
    flagged = 0
    for _ in range(runs):
        variants = np.where(rng.random(len(part)) < 0.5, "control", "treatment")
        analysis = experiments.analyze(daily_of(part, variants, primary_only), primary_only)
        flagged += next(r for r in analysis.results if r.headline).significant
    rate = flagged / runs
    low, high = (stats.binom.ppf([0.0005, 0.9995], runs, 0.05) / runs).tolist()
    print(f"\nA/A over {runs} re-randomizations, {PRIMARY.name} (cuped): false-positive rate {rate:.4f} "
          f"(99.9% band [{low:.4f}, {high:.4f}])")  # fmt: skip
    assert low <= rate <= high


def test_an_experiment_without_control_is_an_error() -> None:
    group = Group(10, 0, {PRIMARY.name: Sums(10, 10.0, 20.0)})
    with pytest.raises(ExperimentError, match=r"no variant named 'control' \(variants: a, b\)"):
        experiments.analyze(Daily("exp-x", {START: {"a": group, "b": group}}), CATALOGUE)


# --- runs over some experiments --------------------------------------------------------------------


def test_a_run_over_one_experiment_keeps_the_others_rows(
    spark: Any, lake_settings: Settings, table: pd.DataFrame
) -> None:
    published: dict[str, Any] = {}
    experiments.run(lake_settings, spark, experiments=[SRM], publish=lambda n, f: published.update({n: f}))
    frame = published[experiments.RESULTS].toPandas().set_index(["experiment_id", "metric", "method"])
    assert sorted(frame.index) == sorted(table.index)  # SRM recomputed, LIFTED as published
    assert (frame.loc[LIFTED].computed_at == table.loc[LIFTED].computed_at).all()
    assert (frame.loc[SRM].computed_at > table.loc[SRM].computed_at).all()


def test_a_run_over_an_unknown_experiment_names_the_known_ones(
    spark: Any, lake_settings: Settings, lake: Lake
) -> None:
    with pytest.raises(ExperimentError, match=f"unknown experiment exp-nope: .* has {LIFTED}, {SRM}"):
        experiments.run(lake_settings, spark, experiments=["exp-nope"], publish=lambda n, f: None)


# --- (e) the gate ----------------------------------------------------------------------------------


def test_a_results_frame_breaking_the_contract_is_refused(
    spark: Any, lake_settings: Settings, lake: Lake, reports: dict
) -> None:
    from pyspark.sql import functions as F

    path = lake.gold(experiments.RESULTS)
    before = sorted(map(tuple, spark.read.format("delta").load(path).collect()), key=repr)
    bad = spark.createDataFrame(before[:3], spark.read.format("delta").load(path).schema)
    bad = bad.withColumn("p_value", F.lit(1.5))
    with pytest.raises(QualityGateFailed, match="p_value"):
        experiments.gated(Gate(lake_settings, spark))(experiments.RESULTS, bad)
    after = sorted(map(tuple, spark.read.format("delta").load(path).collect()), key=repr)
    assert after == before


# --- (f) the CLI ------------------------------------------------------------------------------------


def said(result: Any) -> str:
    return " ".join(result.output.split())


def test_cli_names_an_unknown_experiment_and_the_known_ones(lake_settings: Settings, lake: Lake) -> None:
    env = {"REELPULSE_LAKE_DIR": lake_settings.lake_dir}
    result = CliRunner().invoke(app, ["experiments", "report", "exp-nope"], env=env)
    assert result.exit_code == 1
    assert f"unknown experiment exp-nope: gold experiment_user_metrics has {LIFTED}, {SRM}" in said(result)


def test_cli_without_gold_says_to_build_the_lake(tmp_path: Path) -> None:
    for command in (["experiments", "report"], ["experiments", "list"]):
        result = CliRunner().invoke(app, command, env={"REELPULSE_LAKE_DIR": str(tmp_path)})
        assert result.exit_code == 1
        assert "does not exist yet" in said(result)
        assert "run `reelpulse lake build` first" in said(result)


def test_cli_lists_exposed_users_per_variant(lake_settings: Settings, lake: Lake) -> None:
    result = CliRunner().invoke(
        app, ["experiments", "list"], env={"REELPULSE_LAKE_DIR": lake_settings.lake_dir}
    )
    assert result.exit_code == 0, result.output
    cells = said(result).replace("│", " ").split()
    assert LIFTED in cells
    assert SRM in cells
    assert "2,540" in cells
    assert "40" in cells
