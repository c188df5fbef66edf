"""A/B experiment reports at scale: ``batch.experiments`` over a synthetic gold
experiment_user_metrics, beside the naive way of collecting every user to pandas.

Run ``python -m benchmarks.experiments`` (``--help`` lists the options). In one Spark
session (the settings' master, ``local[*]`` by default) it synthesizes ``--users`` exposed
users (default 1,000,000; Spark's ``range`` and seeded ``rand``) in the exact columns and
types of gold.yml's experiment_user_metrics, spread over three experiments: one with a
planted +3% on watch time, an A/A one, and one with two treatment variants. Not timed.
Then it times, each with the peak RSS of the Python process and of the whole process tree
(Spark's JVM included):

1. **report**: ``experiments.run``: the Spark pass of sums, the analysis of every
   experiment (SRM, Welch or two-proportion, CUPED, Holm/BH, mSPRT over daily looks), the
   results table through its quality gate, and the HTML reports;
2. **sums + analysis**: the same without the gate, the table and the HTML;
3. **baseline**: the naive way: the per-user metric columns collected to pandas (with
   Arrow) and ``scipy.stats.ttest_ind(equal_var=False)`` per experiment, variant and metric.

The baseline's Welch p-values and lifts are compared with the report's. Results go to
``artifacts/bench/experiments.json``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer
from rich.table import Table

from batch import experiments, gold
from batch import spark as spark_support
from batch.lake import Lake
from benchmarks.collector import TreeSampler
from benchmarks.producer import console, write_results
from reelpulse.settings import PROJECT_ROOT, Settings

log = logging.getLogger("benchmarks.experiments")

RESULTS_PATH = PROJECT_ROOT / "artifacts" / "bench" / "experiments.json"
MIB = 1024 * 1024
START = dt.datetime(2025, 3, 3, tzinfo=dt.UTC)
DAYS = 14
AS_OF = (START + dt.timedelta(days=DAYS + 2)).date()
EXPERIMENTS = ("bench-lift", "bench-aa", "bench-three-arms")
LIFT = 0.03  # on the treatment's watch time in bench-lift
PHASES = {  # in the order they run
    "baseline": "baseline",
    "sums_and_analysis": "sums + analysis",
    "report": "report",
}
CAPTION = (
    "report: job + gate + table + HTML; sums + analysis: without the gate, table and HTML; "
    "baseline: users to pandas (Arrow) + scipy Welch per metric"
)


class PhaseSampler(TreeSampler):
    """The process tree's peak RSS (TreeSampler) and this Python process's own."""

    def __init__(self) -> None:
        super().__init__(os.getpid())
        self.peak_own = 0

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.peak_rss = max(self.peak_rss, self.rss())
            self.peak_own = max(self.peak_own, self.root.memory_info().rss)


def measured(name: str, job: Callable[[], Any], runs: int) -> tuple[dict[str, Any], Any]:
    """Run ``job`` ``runs`` times (the first cold, the others warm): the seconds of each,
    and the peak RSS of the tree and of this process over all of them."""
    sampler = PhaseSampler()
    before_tree, before_own = sampler.rss(), sampler.root.memory_info().rss
    sampler.start()
    seconds, result = [], None
    for run in range(runs):
        label = f"{name} ({'cold' if run == 0 else 'warm'})"
        started = time.perf_counter()
        with console.status(f"{label} ..."):
            result = job()
        seconds.append(round(time.perf_counter() - started, 2))
        console.print(f"{label}: {seconds[-1]:.1f}s")
    sampler.finish()
    phase = {
        "seconds": seconds,
        "tree_rss_before_mib": round(before_tree / MIB),
        "tree_rss_peak_mib": round(sampler.peak_rss / MIB),
        "python_rss_before_mib": round(before_own / MIB),
        "python_rss_peak_mib": round(sampler.peak_own / MIB),
    }
    return phase, result


# --------------------------------------------------------------------------- data


UNIFORMS = 17


def synthesize(spark: Any, users: int, seed: int) -> Any:
    """``users`` exposed users in gold's columns and types of experiment_user_metrics.
    The seeded uniforms are drawn once, as columns, before anything uses them: a ``rand``
    inside a conditional is evaluated only on some rows, and two copies of it drift apart."""
    from pyspark.sql import functions as F

    draws = spark.range(users).select("id", *(F.rand(seed + k).alias(f"_u{k}") for k in range(UNIFORMS)))
    return _measures(_base(draws))


def _base(draws: Any) -> Any:
    from pyspark.sql import functions as F

    def u(k: int) -> Any:
        return F.col(f"_u{k}")

    def exponential(k: int) -> Any:
        return -F.log(1 - u(k))

    index = F.col("id") % len(EXPERIMENTS)
    experiment = F.element_at(F.array(*map(F.lit, EXPERIMENTS)), (index + 1).cast("int"))
    arms = F.array(*map(F.lit, ("control", "treatment-a", "treatment-b")))
    three = F.element_at(arms, (F.floor(u(1) * 3) + 1).cast("int"))
    variant = F.when(index == 2, three).when(u(1) < 0.5, "control").otherwise("treatment")
    lift = F.when((index == 0) & (u(1) >= 0.5), 1 + LIFT).otherwise(1.0)
    pre_watch = (exponential(2) + exponential(3)) * 2e6
    watch = F.when(u(4) < 0.1, 0).otherwise(
        (0.7 * pre_watch + (exponential(5) + exponential(6)) * 1.5e6) * lift
    )
    exposed = F.lit(int(START.timestamp())) + F.floor(u(7) * DAYS * 86_400)
    return draws.select(
        experiment.alias("experiment_id"), variant.alias("variant"),
        F.sha2(F.col("id").cast("string"), 256).alias("user_id"),
        F.timestamp_seconds(exposed).alias("first_exposed_at"),
        (1 + F.floor(u(8) * 3)).alias("exposure_count"), (u(9) < 0.005).alias("multiple_variants"),
        F.floor(exponential(10) * 4).alias("pre_sessions"),
        F.floor(exponential(11) * 0.3).alias("pre_play_failures"),
        F.floor(pre_watch).alias("pre_watch_time_ms"), F.floor(watch).alias("watch_time_ms"),
        F.floor(u(12) * 15).alias("pre_active_days"), u(13).alias("_u1"), u(14).alias("_u7"),
        exponential(15).alias("_e1"), exponential(0).alias("_e2"), exponential(16).alias("_e3"),
    )  # fmt: skip


def _measures(base: Any) -> Any:
    from pyspark.sql import functions as F

    c = F.col
    as_of = F.lit(AS_OF)
    frame = base.withColumns({
        "exposure_date": F.to_date("first_exposed_at"),
        "sessions": F.floor(c("_e1") * 2 + 0.8 * c("pre_sessions")),
        "play_failures": F.floor(c("_e2") * 0.2 + 0.3 * c("pre_play_failures")),
        "rebuffer_ms": F.floor(c("watch_time_ms") * 0.016 * c("_e3")),
        "pre_rebuffer_ms": F.floor(c("pre_watch_time_ms") * 0.016 * c("_e3")),
        "active_days": F.least(F.lit(14), F.floor(c("pre_active_days") * 0.7 + c("_e1") * 2)),
    })  # fmt: skip
    frame = frame.withColumns({
        "d1_observable": F.date_add("exposure_date", 2) <= as_of,
        "d7_observable": F.date_add("exposure_date", 8) <= as_of,
        "window_complete": F.date_add("exposure_date", 15) <= as_of,
        "rebuffer_ratio": _ratio(c("rebuffer_ms"), c("watch_time_ms")),
        "pre_rebuffer_ratio": _ratio(c("pre_rebuffer_ms"), c("pre_watch_time_ms")),
    })  # fmt: skip
    frame = frame.withColumns({
        "retained_d1": F.when(c("_u1") < 0.4, True).when(c("d1_observable"), False),
        "retained_d7": F.when(c("_u7") < 0.6, True).when(c("d7_observable"), False),
    })  # fmt: skip
    columns = gold.load_contract()["tables"][experiments.SOURCE]["columns"]
    return frame.select(*(c(col["name"]).cast(col["type"]).alias(col["name"]) for col in columns))


def _ratio(rebuffer: Any, watch: Any) -> Any:
    from pyspark.sql import functions as F

    return rebuffer / F.nullif(watch + rebuffer, F.lit(0))


# --------------------------------------------------------------------------- the phases


def sums_and_analysis(spark: Any, lake: Lake) -> dict[str, experiments.Analysis]:
    catalogue = experiments.Catalogue.load()
    users = spark.read.format("delta").load(lake.gold(experiments.SOURCE))
    daily = experiments.collect_sums(experiments.daily_sums(users, catalogue), catalogue)
    return {e: experiments.analyze(d, catalogue) for e, d in daily.items()}


def baseline(spark: Any, lake: Lake) -> dict[tuple[str, str, str], tuple[float, float]]:
    """The naive way: every user's metrics to pandas, then scipy's Welch test per metric.
    Returns (lift, p-value) per (experiment, variant, metric)."""
    from scipy import stats

    catalogue = experiments.Catalogue.load()
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    columns = ["experiment_id", "variant", "multiple_variants", *(m.column for m in catalogue.metrics)]
    frame = spark.read.format("delta").load(lake.gold(experiments.SOURCE)).select(*columns).toPandas()
    found = {}
    for (experiment, variant), part in frame[~frame.multiple_variants].groupby(["experiment_id", "variant"]):
        control = frame[
            (frame.experiment_id == experiment) & (frame.variant == "control") & ~frame.multiple_variants
        ]
        for metric in catalogue.metrics if variant != "control" else ():
            t, c = (p[metric.column].dropna().astype(float) for p in (part, control))
            found[experiment, variant, metric.name] = (
                t.mean() - c.mean(),
                float(stats.ttest_ind(t, c, equal_var=False).pvalue),
            )
    return found


def agreement(
    analyses: dict[str, experiments.Analysis], naive: dict[tuple[str, str, str], Any]
) -> dict[str, float]:
    """Largest relative difference of the Welch lifts and p-values (p above 1e-300)."""
    lifts, ps = [], []
    for analysis in analyses.values():
        for r in (r for r in analysis.results if r.method == "welch"):
            lift, p = naive[analysis.experiment_id, r.variant, r.metric.name]
            lifts.append(abs(r.effect.absolute_lift - lift) / max(abs(lift), 1e-12))
            if p > 1e-300:
                ps.append(abs(r.effect.p_value - p) / p)
    return {"welch_rows": len(lifts), "max_rel_diff_lift": max(lifts), "max_rel_diff_p": max(ps)}


# --------------------------------------------------------------------------- report


def report(result: dict[str, Any]) -> None:
    table = Table(
        "phase", "s cold", "s warm", "users/s warm", "Python RSS MiB", "tree RSS MiB",
        title=f"A/B reports over {result['users']:,} exposed users, {len(EXPERIMENTS)} experiments",
        caption=CAPTION,
    )  # fmt: skip
    for name, label in PHASES.items():
        phase = result[name]
        cold, warm = phase["seconds"][0], min(phase["seconds"][1:] or phase["seconds"])
        own = phase["python_rss_peak_mib"]
        grown = own - phase["python_rss_before_mib"]
        table.add_row(
            label, f"{cold:.1f}", f"{warm:.1f}", f"{result['users'] / warm:,.0f}", f"{own:,} (+{grown:,})",
            f"{phase['tree_rss_peak_mib']:,}",
        )  # fmt: skip
    console.print(table)
    agree = result["agreement"]
    console.print(
        f"Welch rows agree with the baseline's scipy over {agree['welch_rows']} rows: lifts to "
        f"{agree['max_rel_diff_lift']:.1e}, p-values to {agree['max_rel_diff_p']:.1e} (relative)"
    )
    console.print(f"peak RSS of the process tree over the whole run: {result['peak_rss_mib']:,.0f} MiB")
    for line in result["verdicts"]:
        console.print(line)


def verdicts(result: dict[str, Any]) -> list[str]:
    lift = result["lift_detected"]
    return [
        f"planted +{LIFT:.0%} on bench-lift watch time: relative lift {lift['relative_lift']:+.2%} "
        f"[{lift['relative_ci_low']:+.2%}, {lift['relative_ci_high']:+.2%}] ({lift['method']}), "
        f"significant={lift['significant']}",
        f"report HTML: {result['html_index']}",
    ]


def _lift(analyses: dict[str, experiments.Analysis]) -> dict[str, Any]:
    row = next(r for r in analyses["bench-lift"].results if r.metric.role == "primary" and r.headline)
    e = row.effect
    return {
        "method": row.method, "relative_lift": e.relative_lift, "relative_ci_low": e.relative_ci[0],
        "relative_ci_high": e.relative_ci[1], "significant": row.significant,
    }  # fmt: skip


# --------------------------------------------------------------------------- the run


def run(settings: Settings, users: int, seed: int, runs: int) -> dict[str, Any]:
    work = Path(settings.state_dir) / "experiments-bench"
    shutil.rmtree(work, ignore_errors=True)
    settings = settings.model_copy(update={"lake_dir": str(work / "lake")})
    lake = Lake(settings.lake_dir)
    whole = TreeSampler(os.getpid())
    whole.start()
    spark = spark_support.session(settings, "reelpulse-bench-experiments")
    result: dict[str, Any] = {
        "users": users,
        "runs": runs,
        "seed": seed,
        "spark_master": settings.spark_master,
        "cpus": psutil.cpu_count(),
    }
    try:
        with console.status(f"synthesizing {users:,} exposed users into gold {experiments.SOURCE}"):
            synthesize(spark, users, seed).write.format("delta").mode("overwrite").save(
                lake.gold(experiments.SOURCE)
            )
            spark.read.format("delta").load(lake.gold(experiments.SOURCE)).count()  # warm the Delta read path
        result["baseline"], naive = measured(PHASES["baseline"], lambda: baseline(spark, lake), runs)
        result["sums_and_analysis"], analyses = measured(
            PHASES["sums_and_analysis"], lambda: sums_and_analysis(spark, lake), runs
        )
        result["report"], reports = measured(PHASES["report"], lambda: experiments.run(settings, spark), runs)
    finally:
        spark.stop()
        result["peak_rss_mib"] = whole.finish() / MIB
    result["agreement"] = agreement(analyses, naive)
    result["lift_detected"] = _lift(analyses)
    result["html_index"] = str(Path(lake.reports(experiments.REPORTS)) / "index.html")
    result["srm"] = {e: r.analysis.srm.message for e, r in reports.items()}
    result["verdicts"] = verdicts(result)
    report(result)
    return result


def main(
    users: Annotated[int, typer.Option(help="Exposed users to synthesize")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed of Spark's rand")] = 7,
    runs: Annotated[int, typer.Option(help="Runs per phase: the first cold, the rest warm")] = 2,
    output: Annotated[Path, typer.Option(help="Where the JSON results go")] = RESULTS_PATH,
) -> None:
    """Benchmark the A/B report job beside collecting every user to pandas + scipy."""
    logging.basicConfig(level=logging.WARNING)
    result = run(Settings(), users, seed, runs)
    write_results(output, {k: v for k, v in result.items() if not (isinstance(v, float) and math.isnan(v))})


if __name__ == "__main__":
    typer.run(main)
