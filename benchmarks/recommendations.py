"""Recommender cost and quality: ``batch.recommendations.run`` on a synthetic lake whose
users have known tastes, each model beside the popularity baseline of the same run.

Run ``python -m benchmarks.recommendations`` (``--help`` lists the options). It:

1. synthesizes with Spark (no Python loop over rows; not timed) a catalog of titles with
   1-3 of 20 genres and a skewed popularity, users each with a latent taste over the
   genres (a favourite genre weighing 45-80 %, the rest a Dirichlet(1/2) draw), and about
   ``--interactions`` (user, title) rows: a user's draws pick a genre by the user's taste
   and a title of that genre by popularity; titles of the favourite genre are watched
   longer and rated higher; about 25 % of the rows are rated (a tenth of those are
   ratings without playback). It writes gold ``user_title_interactions``, silver
   ``dim_titles`` and ``dim_users`` of a fresh lake, and keeps the ground truth beside;
2. runs ``recommendations.run`` once (one parameter set per model, the contract's whole
   grid with ``--full-grid``), timed as a whole, while the peak RSS of the process tree
   (Spark's JVM included) is sampled, and the job's log lines time its steps;
3. reports per model the fit + recommend seconds on the training titles, the test
   metrics and the nDCG lift over popularity; and how well the published top 10 recovers
   the synthetic tastes: the share of each user's list in the user's favourite genre, for
   the published model and for the popularity list computed from the same interactions.

Results go to ``artifacts/bench/recommendations.json``.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import logging
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import psutil
import typer
from pydantic import SecretStr
from rich import box
from rich.table import Table

from batch import ranking, recommendations
from batch import spark as spark_support
from batch.lake import Lake
from benchmarks.collector import MemorySampler, TreeSampler
from benchmarks.producer import BENCH_ROOT, console, make_progress, write_results
from reelpulse.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("benchmarks.recommendations")

RESULTS_PATH = PROJECT_ROOT / "artifacts" / "bench" / "recommendations.json"
WORK_DIR = BENCH_ROOT / "recommendations"
KEY = SecretStr("benchmark-pseudonymization-key-not-a-secret")
MIB = 1024 * 1024
GENRES = (
    "drama", "comedy", "thriller", "action", "documentary", "romance", "crime", "sci-fi",
    "animation", "horror", "family", "fantasy", "mystery", "adventure", "reality", "history",
    "music", "sport", "war", "western",
)  # fmt: skip
PARTITIONS = 4  # of the synthetic frames: fixed, like every draw (hashes of ids, not rand())
GENRE_SKEW = 1.3  # genre index = floor(20 * u^skew): the first genres are the common ones
TITLE_SKEW = 1.6  # title rank within a genre = floor(m * u^skew): popular titles drawn more
OVERDRAW = 1.5  # draws per title a user keeps: repeats are sessions, not new titles
RATED_SHARE = 0.25
RATINGS_ONLY_SHARE = 0.10  # of the rated rows: an imported rating, no playback
DAYS = 90
T0 = dt.datetime(2026, 8, 1, tzinfo=dt.UTC)
INTERACTIONS = (
    "user_id string, title_id string, sessions bigint, watch_time_ms bigint, completions bigint, "
    "max_completion_share double, last_watched_at timestamp, rating float, rated_at timestamp"
)
METRICS = ("ndcg_at_k", "precision_at_k", "recall_at_k", "map_at_k", "catalog_coverage")
STEP = re.compile(r"^(?P<phase>validation|test): (?P<model>\w+)(?P<params> \{.*\})? nDCG@")
COMPACT: dict[str, Any] = {  # tables that fit 80 columns (a log, a pipe)
    "box": box.SIMPLE_HEAD,
    "show_edge": False,
    "collapse_padding": True,
    "pad_edge": False,
}
NOTES = (
    "fit + recommend: Evaluated.train_seconds, the refit on all training titles and the top 10 "
    "of every user (cached and counted), timed by the job; the run's wall time also holds "
    "the validation grid, evaluations, publication through the quality gate and the report.",
    "The hybrid's time includes its own ALS (implicit) fit and content scoring.",
    "Favourite-genre share: per user, the share of the published top 10 whose genres hold the "
    "user's synthetic favourite genre, averaged over users. 'chance' is the catalog's share "
    "of titles in that genre; 'own titles' the share of the user's interactions.",
    "Peak RSS is the Python process plus Spark's JVM (the JVM heap already held the synthesis); "
    "it counts the file pages Spark maps (shuffle blocks, jars), the anonymous peak does not.",
    "A step's wall time runs from the job's previous log line to its own; 'cores' below 2 means "
    "Spark waited (a single task, the driver) or the CPUs were busy with other work.",
    "The machine has 2 cores and other work may run beside: compare runs, not single numbers.",
)


# --------------------------------------------------------------------------- synthesis


def uniform(seed: int, salt: str, *columns: Column | str) -> Column:
    """A uniform draw in [0, 1) from a hash of the seed, a salt and the row's ids: the same
    for the same row however Spark partitions or reruns it."""
    from pyspark.sql import functions as F

    hashed = F.xxhash64(F.lit(seed), F.lit(salt), *columns)
    return F.pmod(hashed, F.lit(1 << 53)).cast("double") / float(1 << 53)


def normal(seed: int, salt: str, *columns: Column | str) -> Column:
    """A standard normal draw (Box-Muller over two :func:`uniform` draws)."""
    from pyspark.sql import functions as F

    radius = F.sqrt(-2.0 * F.log(1.0 - uniform(seed, f"{salt}:r", *columns)))
    return radius * F.cos(2.0 * 3.141592653589793 * uniform(seed, f"{salt}:a", *columns))


def clamp(column: Column, low: float, high: float) -> Column:
    from pyspark.sql import functions as F

    return F.least(F.greatest(column, F.lit(low)), F.lit(high))


def synth_titles(spark: SparkSession, titles: int, seed: int) -> DataFrame:
    """``title_id, genre_ids, popularity, runtime_min``: 1-3 distinct genres (skewed)."""
    from pyspark.sql import functions as F

    title_id = F.format_string("tt%07d", "id")
    genre = [
        F.floor(len(GENRES) * F.pow(uniform(seed, f"genre{i}", title_id), GENRE_SKEW)).cast("int")
        for i in range(3)
    ]
    count = (1 + F.floor(3 * uniform(seed, "genres", title_id))).cast("int")
    return spark.range(titles, numPartitions=PARTITIONS).select(
        title_id.alias("title_id"),
        F.slice(F.array_distinct(F.array(*genre)), 1, count).alias("genre_ids"),
        F.exp(normal(seed, "popularity", title_id)).alias("popularity"),
        (20 + F.floor(130 * uniform(seed, "runtime", title_id))).cast("int").alias("runtime_min"),
    )


def synth_users(spark: SparkSession, users: int, per_user: float, seed: int) -> DataFrame:
    """``user_id, favourite, taste, cumulative, activity``: taste = w * favourite + (1 - w) *
    Dirichlet(1/2) over the genres, w in [0.45, 0.8]; ``favourite`` is the taste's argmax;
    ``activity`` (titles) is 1 + the floor of an exponential, ``per_user`` on average."""
    from pyspark.sql import functions as F

    user_id = F.format_string("u%08d", "id")
    pick = F.floor(len(GENRES) * F.pow(uniform(seed, "favourite", user_id), GENRE_SKEW)).cast("int")
    weight = 0.45 + 0.35 * uniform(seed, "weight", user_id)
    gammas = F.array(*[F.pow(normal(seed, f"taste{g}", user_id), 2) for g in range(len(GENRES))])
    scale = max(per_user - 0.5, 0.0)  # E[floor(X)] = 1 / (e^(1/scale) - 1), about scale - 0.5
    activity = 1 + F.floor(-F.log(1.0 - uniform(seed, "activity", user_id)) * scale)
    frame = spark.range(users, numPartitions=PARTITIONS).select(
        user_id.alias("user_id"),
        pick.alias("_pick"),
        weight.alias("_w"),
        gammas.alias("_gammas"),
        activity.cast("int").alias("activity"),
    )
    total = F.aggregate("_gammas", F.lit(0.0), lambda acc, x: acc + x)
    taste = F.transform(
        "_gammas",
        lambda x, i: F.when(i == F.col("_pick"), F.col("_w")).otherwise(0.0) + (1 - F.col("_w")) * x / total,
    )
    frame = frame.withColumn("taste", taste)
    cumulative = F.transform(
        "taste", lambda _, i: F.aggregate(F.slice("taste", 1, i + 1), F.lit(0.0), lambda acc, x: acc + x)
    )
    favourite = (F.array_position("taste", F.array_max("taste")) - 1).cast("int")
    return frame.select(
        "user_id", favourite.alias("favourite"), "taste", cumulative.alias("cumulative"), "activity"
    )


def synth_interactions(users: DataFrame, titles: DataFrame, seed: int) -> DataFrame:
    """Rows of gold ``user_title_interactions``: every draw of a user picks a genre by the
    user's taste, then a title of that genre, popular ones more often. A user draws
    ``OVERDRAW`` times their activity and keeps the first ``activity`` distinct titles;
    every draw of a kept title is a session. The favourite genre's titles are watched to
    a larger share (0.75 against 0.3 + 0.6 * taste) and rated higher (4.1 against 2.3 +
    2.5 * taste)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_genre = titles.select("title_id", "popularity", F.explode("genre_ids").alias("genre"))
    by_genre = by_genre.withColumn(
        "position",
        F.row_number().over(Window.partitionBy("genre").orderBy(F.desc("popularity"), "title_id")) - 1,
    )
    sizes = by_genre.groupBy("genre").agg(F.count("*").alias("_m"))
    draws = F.ceil(F.col("activity") * OVERDRAW).cast("int") + 2
    slots = users.select(
        "user_id", "cumulative", "activity", F.explode(F.sequence(F.lit(1), draws)).alias("_k")
    )
    below = F.size(F.filter("cumulative", lambda c: c < uniform(seed, "genre", "user_id", "_k")))
    slots = slots.select("user_id", "activity", "_k", F.least(below, F.lit(len(GENRES) - 1)).alias("genre"))
    position = F.floor(F.col("_m") * F.pow(uniform(seed, "title", "user_id", "_k"), TITLE_SKEW))
    picked = (
        slots.join(F.broadcast(sizes), "genre")
        .select("user_id", "activity", "_k", "genre", position.cast("int").alias("position"))
        .join(by_genre.select("genre", "position", "title_id"), ["genre", "position"])
        .groupBy("user_id", "title_id")
        .agg(F.count("*").alias("sessions"), F.min("_k").alias("_first"), F.first("activity").alias("_n"))
        .withColumn("_i", F.row_number().over(Window.partitionBy("user_id").orderBy("_first")))
        .where(F.col("_i") <= F.col("_n"))
    )
    rows = picked.join(users.select("user_id", "favourite", "taste"), "user_id").join(
        F.broadcast(titles.select("title_id", "genre_ids", "runtime_min")), "title_id"
    )
    ids = ("user_id", "title_id")
    affinity = F.aggregate("genre_ids", F.lit(0.0), lambda acc, g: acc + F.element_at(F.col("taste"), g + 1))
    loved = F.array_contains("genre_ids", F.col("favourite"))
    share = clamp(
        F.when(loved, 0.75).otherwise(0.3 + 0.6 * affinity) + 0.2 * normal(seed, "share", *ids), 0.02, 1.0
    )
    rated = uniform(seed, "rated", *ids) < RATED_SHARE
    watched = ~(rated & (uniform(seed, "import", *ids) < RATINGS_ONLY_SHARE))
    mean_rating = F.when(loved, 4.1).otherwise(2.3 + 2.5 * affinity)
    rating = clamp(F.round(2 * (mean_rating + 0.8 * normal(seed, "rating", *ids))) / 2, 0.5, 5.0)
    start = F.lit(int(T0.timestamp()))
    watched_at = F.timestamp_seconds(start + F.floor(uniform(seed, "at", *ids) * DAYS * 86_400))
    rated_at = F.timestamp_seconds(
        F.unix_seconds(watched_at) + F.floor(uniform(seed, "rated_at", *ids) * 2 * 86_400)
    )
    sessions = F.col("sessions").cast("bigint")
    completions = F.when(share >= 0.9, 1 + F.floor(uniform(seed, "completions", *ids) * sessions)).otherwise(
        0
    )
    nothing = F.lit(None)
    return rows.select(
        "user_id",
        "title_id",
        F.when(watched, sessions).otherwise(0).cast("bigint").alias("sessions"),
        F.when(watched, sessions * F.col("runtime_min") * 60_000 * share)
        .otherwise(0)
        .cast("bigint")
        .alias("watch_time_ms"),
        F.when(watched, completions).otherwise(0).cast("bigint").alias("completions"),
        F.when(watched, share).otherwise(nothing).cast("double").alias("max_completion_share"),
        F.when(watched, watched_at).otherwise(nothing).cast("timestamp").alias("last_watched_at"),
        F.when(rated, rating).otherwise(nothing).cast("float").alias("rating"),
        F.when(rated, rated_at).otherwise(nothing).cast("timestamp").alias("rated_at"),
    )


@dataclass
class Synthetic:
    """Where the synthetic lake and its ground truth are, and how big they came out."""

    lake: Lake
    truth_users: str
    truth_titles: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def synthesize(
    spark: SparkSession, work: Path, interactions: int, users: int, titles: int, seed: int
) -> Synthetic:
    """The lake's input tables and the truth beside them (not timed as the benchmark)."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    lake = Lake(str(work / "lake"))
    synthetic = Synthetic(lake, str(work / "truth" / "users"), str(work / "truth" / "titles"))
    genre_names = F.array(*[F.lit(g) for g in GENRES])
    with make_progress() as progress:
        task = progress.add_task("synthesizing the lake", total=4)
        synth_titles(spark, titles, seed).write.mode("overwrite").parquet(synthetic.truth_titles)
        truth_titles = spark.read.parquet(synthetic.truth_titles)
        truth_titles.select(
            "title_id", F.transform("genre_ids", lambda g: F.element_at(genre_names, g + 1)).alias("genres")
        ).write.format("delta").mode("overwrite").save(lake.silver("dim_titles"))
        progress.advance(task)
        per_user = interactions / users if users else 0.0
        synth_users(spark, users, per_user, seed).write.mode("overwrite").parquet(synthetic.truth_users)
        truth_users = spark.read.parquet(synthetic.truth_users)
        truth_users.select("user_id").write.format("delta").mode("overwrite").save(lake.silver("dim_users"))
        progress.advance(task)
        rows = synth_interactions(truth_users, truth_titles, seed)
        rows.write.format("delta").mode("overwrite").save(lake.gold("user_title_interactions"))
        progress.advance(task)
        written = spark.read.format("delta").load(lake.gold("user_title_interactions"))
        stats = written.agg(
            F.count("*").alias("interactions"),
            F.countDistinct("user_id").alias("users_with_interactions"),
            F.countDistinct("title_id").alias("titles_with_interactions"),
            F.count("rating").alias("rated"),
            F.sum((F.col("watch_time_ms") == 0).cast("int")).alias("ratings_only"),
            F.sum("sessions").alias("sessions"),
        ).first()
        assert stats is not None
        synthetic.counts = {k: int(v or 0) for k, v in stats.asDict().items()}
        synthetic.counts["users"] = users
        synthetic.counts["titles"] = titles
        progress.advance(task)
    synthetic.seconds = time.perf_counter() - started
    return synthetic


# --------------------------------------------------------------------------- the job's steps


class Timeline(logging.Handler):
    """The job's log lines (``reelpulse.batch.*``) with the seconds since the run started
    and the CPU seconds the process tree had used by then: the time between two lines is
    what the step ending with the later line took."""

    def __init__(self, status: Any, sampler: TreeSampler) -> None:
        super().__init__(logging.INFO)
        self.status = status
        self.sampler = sampler
        self.started = time.perf_counter()
        self.cpu_started = sampler.cpu_s()
        self.lines: list[tuple[float, float, str]] = []

    def mark(self) -> tuple[float, float]:
        return time.perf_counter() - self.started, self.sampler.cpu_s() - self.cpu_started

    def emit(self, record: logging.LogRecord) -> None:
        elapsed, cpu = self.mark()
        message = record.getMessage()
        self.lines.append((elapsed, cpu, message))
        if STEP.match(message) or message.startswith("quality:"):
            console.print(f"  [{elapsed:7,.1f}s] {message}", highlight=False)
        self.status.update(f"[{elapsed:,.0f}s] recommendations.run: {message[:100]}")


def steps(lines: list[tuple[float, float, str]], end: tuple[float, float]) -> list[dict[str, Any]]:
    """Wall and CPU seconds per step of the run: a validation line ends the tuning of one
    parameter set (the first also holds reading the feedback and both splits), a test line
    ends one model's refit + evaluation on test, and the rest is publication (gates, the
    evaluations table, the report)."""
    out: list[dict[str, Any]] = []
    previous = (0.0, 0.0)
    for at, cpu, message in lines:
        match = STEP.match(message)
        if match:
            name = f"{match['phase']}: {match['model']}"
            if match["phase"] == "validation" and match["params"]:
                params = ast.literal_eval(match["params"].strip())
                name += " " + " ".join(f"{k}={v}" for k, v in params.items())
            out.append({"step": name, "seconds": at - previous[0], "cpu_seconds": cpu - previous[1]})
            previous = (at, cpu)
    out.append(
        {
            "step": "publish: gates, evaluations, report",
            "seconds": end[0] - previous[0],
            "cpu_seconds": end[1] - previous[1],
        }
    )
    return out


@dataclass
class Job:
    """One timed ``recommendations.run``."""

    result: Any
    seconds: float
    cpu_seconds: float
    peak_rss: int
    peak_anon: int
    steps: list[dict[str, Any]]
    at_peak: list[dict[str, Any]]  # the processes at the RSS peak
    rss_by_kind: dict[str, int]  # their RSS summed by kind of process


def run_job(settings: Settings, spark: SparkSession, grid: dict[str, Any]) -> Job:
    """``recommendations.run`` timed as a whole, with the process tree's peak RSS sampled
    and its CPU time read at every log line of the job."""
    job_log = logging.getLogger("reelpulse.batch")
    level, propagate = job_log.level, job_log.propagate
    sampler = MemorySampler(os.getpid())
    sampler.start()
    with console.status("recommendations.run") as status:
        timeline = Timeline(status, sampler)
        job_log.addHandler(timeline)
        job_log.setLevel(logging.INFO)
        job_log.propagate = False
        try:
            result = recommendations.run(settings, spark, grid=grid)
            end = timeline.mark()
        finally:
            job_log.removeHandler(timeline)
            job_log.setLevel(level)
            job_log.propagate = propagate
            peak = sampler.finish()
    at_peak = [
        {"pid": p["pid"], "kind": p["kind"], "rss_mib": p["rss"] / MIB, "anon_mib": p["anon"] / MIB}
        for p in sampler.at_peak
    ]
    by_kind = sampler.by_kind_at_peak()
    return Job(result, end[0], end[1], peak, sampler.peak_anon, steps(timeline.lines, end), at_peak, by_kind)


# --------------------------------------------------------------------------- taste recovery


def favourite_share(
    recommended: DataFrame, truth_users: DataFrame, truth_titles: DataFrame
) -> dict[str, float]:
    """Per user, the share of ``recommended`` (``user_id, title_id``) whose genres hold the
    user's favourite genre, averaged over the users listed."""
    from pyspark.sql import functions as F

    hit = F.array_contains("genre_ids", F.col("favourite")).cast("double")
    per_user = (
        recommended.select("user_id", "title_id")
        .join(truth_users.select("user_id", "favourite"), "user_id")
        .join(F.broadcast(truth_titles.select("title_id", "genre_ids")), "title_id")
        .groupBy("user_id")
        .agg(F.avg(hit).alias("share"), F.count("*").alias("listed"))
    )
    row = per_user.agg(F.avg("share"), F.count("*"), F.avg("listed")).first()
    assert row is not None
    return {"share": float(row[0] or 0.0), "users": int(row[1]), "mean_list_length": float(row[2] or 0.0)}


def recovery(spark: SparkSession, synthetic: Synthetic, published: str) -> dict[str, Any]:
    """Favourite-genre share of the published lists, of the popularity lists computed from
    the same interactions (the popularity model on all feedback), of chance (the catalog's
    share of titles in the favourite genre) and of the users' own histories."""
    from pyspark.sql import functions as F

    lake = synthetic.lake
    users = spark.read.parquet(synthetic.truth_users)
    titles = spark.read.parquet(synthetic.truth_titles)
    gold_recs = spark.read.format("delta").load(lake.gold("recommendations"))
    interactions = spark.read.format("delta").load(lake.gold("user_title_interactions"))
    feedback = ranking.feedback(interactions).cache()
    dim_titles = spark.read.format("delta").load(lake.silver("dim_titles"))
    popular = recommendations.popularity(recommendations.Data(feedback, dim_titles, 10), {})
    catalog = titles.select(F.explode("genre_ids").alias("favourite")).groupBy("favourite").count()
    in_genre = users.join(catalog, "favourite", "left").select(
        F.coalesce(F.col("count"), F.lit(0)) / F.lit(titles.count())
    )
    chance = in_genre.agg(F.avg(in_genre.columns[0])).first()
    try:
        return {
            "published_model": published,
            "published": favourite_share(gold_recs, users, titles),
            "popularity": favourite_share(popular, users, titles),
            "history": favourite_share(feedback, users, titles),
            "chance": float(chance[0] or 0.0) if chance else 0.0,
        }
    finally:
        feedback.unpersist()


# --------------------------------------------------------------------------- report


def model_rows(result: Any) -> list[dict[str, Any]]:
    base = result.evaluated[recommendations.BASELINE].test["ndcg_at_k"]
    rows = []
    for model, evaluated in result.evaluated.items():
        ndcg = evaluated.test["ndcg_at_k"]
        rows.append(
            {
                "model": model,
                "params": evaluated.params,
                "published": model == result.published,
                "train_seconds": evaluated.train_seconds,
                "validation_ndcg_at_k": evaluated.validation_ndcg,
                **{m: evaluated.test[m] for m in METRICS},
                "users_evaluated": int(evaluated.test["users"]),
                "ndcg_lift_vs_popularity": (ndcg / base - 1) if base > 0 else None,
            }
        )
    return rows


def report(out: dict[str, Any]) -> None:
    counts = out["data"]
    grid = "the contract's grid" if out["full_grid"] else "one parameter set per model"
    table = Table(
        title=f"{counts['interactions']:,} interactions, {counts['users']:,} users, "
        f"{counts['titles']:,} titles; {grid}",
        **COMPACT,
    )
    for column in ("model", "fit+rec s", "nDCG@10", "vs pop.", "P@10", "R@10", "MAP@10", "coverage"):
        left = column == "model"
        table.add_column(column, justify="left" if left else "right", min_width=13 if left else None)
    for row in out["models"]:
        lift = row["ndcg_lift_vs_popularity"]
        baseline = row["model"] == recommendations.BASELINE
        table.add_row(
            row["model"] + ("*" if row["published"] else ""),
            f"{row['train_seconds']:.1f}",
            f"{row['ndcg_at_k']:.3f}",
            "base" if baseline else (f"{lift:+.0%}" if lift is not None else "n/a"),
            f"{row['precision_at_k']:.3f}",
            f"{row['recall_at_k']:.3f}",
            f"{row['map_at_k']:.3f}",
            f"{row['catalog_coverage']:.1%}",
        )
    console.print(table)
    console.print("* published (best validation nDCG@10). fit+rec s: refit + top 10 on the training titles")
    timing = Table(
        "step of recommendations.run",
        "wall s",
        "CPU s",
        "cores",
        title="where the run's time goes",
        **COMPACT,
    )
    for number in timing.columns[1:]:
        number.justify = "right"
    for step in [
        *out["steps"],
        {"step": "whole run", "seconds": out["run_seconds"], "cpu_seconds": out["run_cpu_seconds"]},
    ]:
        wall, cpu = step["seconds"], step["cpu_seconds"]
        timing.add_row(step["step"], f"{wall:,.1f}", f"{cpu:,.1f}", f"{cpu / wall:.2f}" if wall > 0 else "")
    console.print(timing)
    console.print(
        f"cores: CPU seconds of the Python process and Spark's JVM per wall second ({out['cpus']} CPUs here)"
    )
    taste = out["recovery"]
    recovered = Table(
        "top 10 per user", "favourite-genre share", "users", title="genre-taste recovery", **COMPACT
    )
    recovered.columns[1].justify = recovered.columns[2].justify = "right"
    recovered.add_row(
        f"published ({taste['published_model']})",
        f"{taste['published']['share']:.1%}",
        f"{taste['published']['users']:,}",
    )
    recovered.add_row(
        "popularity", f"{taste['popularity']['share']:.1%}", f"{taste['popularity']['users']:,}"
    )
    recovered.add_row("chance (the catalog)", f"{taste['chance']:.1%}", "")
    recovered.add_row(
        "the users' own titles", f"{taste['history']['share']:.1%}", f"{taste['history']['users']:,}"
    )
    console.print(recovered)
    console.print(
        f"whole run {out['run_seconds']:,.1f}s (the synthesis before it: {out['synthesis_seconds']:,.1f}s); "
        f"peak RSS (Python + Spark JVM) {out['peak_rss_mib']:,.0f} MiB, of it anonymous "
        f"{out.get('peak_anon_rss_mib', 0):,.0f} MiB at its peak; driver memory "
        f"{out['driver_memory']}; load average {out['load_before'][0]:.1f} before, "
        f"{out['load_after'][0]:.1f} after, on {out['cpus']} CPUs"
    )
    if parts := out.get("rss_at_peak_mib"):
        console.print("at the RSS peak: " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in parts.items()))
    if out["code_changed_during_run"]:
        console.print(
            "[yellow]batch/recommendations.py, ranking.py or the contract changed during the run[/]"
        )
    console.print("notes:\n" + "\n".join(f"  - {note}" for note in NOTES))


# --------------------------------------------------------------------------- the run


def code_under_test() -> dict[str, str]:
    """A fingerprint of the job's files (sha256, first 12 hex digits), so a result names
    the version it measured; the modules are the ones imported when the benchmark started."""
    files = (recommendations.__file__, ranking.__file__, recommendations.CONTRACT)
    return {
        str(Path(f).relative_to(PROJECT_ROOT)): hashlib.sha256(Path(f).read_bytes()).hexdigest()[:12]
        for f in files
    }


def small_grid(grid: dict[str, Any]) -> dict[str, Any]:
    """The contract's grid cut to its first parameter set per model."""
    return {k: (v[:1] if k in recommendations.MODELS else v) for k, v in grid.items()}


def run(
    settings: Settings, work: Path, interactions: int, users: int, titles: int, seed: int, full_grid: bool
) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    code = code_under_test()
    grid = recommendations.load_contract()["grid"]
    grid = grid if full_grid else small_grid(grid)
    spark = spark_support.session(settings, "reelpulse-bench-recommendations")
    try:
        synthetic = synthesize(spark, work, interactions, users, titles, seed)
        counts = synthetic.counts
        console.print(
            f"synthesized {counts['interactions']:,} interactions ({counts['rated']:,} rated, "
            f"{counts['ratings_only']:,} of them without playback) of {counts['users_with_interactions']:,} "
            f"users over {counts['titles_with_interactions']:,} titles in {synthetic.seconds:.1f}s"
        )
        load_before = os.getloadavg()
        job = run_job(settings, spark, grid)
        result = job.result
        load_after = os.getloadavg()
        with console.status("genre-taste recovery"):
            taste = recovery(spark, synthetic, result.published)
    finally:
        spark.stop()
    out: dict[str, Any] = {
        "data": counts,
        "seed": seed,
        "code": code,
        "code_changed_during_run": code != code_under_test(),
        "full_grid": full_grid,
        "grid": grid,
        "published": result.published,
        "run_id": result.run_id,
        "users_published": result.users,
        "models": model_rows(result),
        "run_seconds": job.seconds,
        "run_cpu_seconds": job.cpu_seconds,
        "synthesis_seconds": synthetic.seconds,
        "steps": job.steps,
        "peak_rss_mib": job.peak_rss / MIB,
        "peak_anon_rss_mib": job.peak_anon / MIB,
        "processes_at_peak_rss": job.at_peak,
        "rss_at_peak_mib": {kind: rss / MIB for kind, rss in job.rss_by_kind.items()},
        "recovery": taste,
        "driver_memory": settings.spark_driver_memory,
        "spark_master": settings.spark_master,
        "shuffle_partitions": settings.spark_shuffle_partitions,
        "cpus": psutil.cpu_count(),
        "python": platform.python_version(),
        "load_before": list(load_before),
        "load_after": list(load_after),
        "lake": synthetic.lake.root,
        "report": result.report,
    }
    report(out)
    return out


def main(
    interactions: Annotated[int, typer.Option(help="(user, title) rows to synthesize, about")] = 1_000_000,
    users: Annotated[int, typer.Option(help="Synthetic users")] = 50_000,
    titles: Annotated[int, typer.Option(help="Synthetic titles")] = 5_000,
    seed: Annotated[int, typer.Option(help="Seed of every synthetic draw")] = 7,
    full_grid: Annotated[bool, typer.Option(help="Tune over the contract's whole grid")] = False,
    driver_memory: Annotated[str, typer.Option(help="spark.driver.memory")] = "2g",
    work_dir: Annotated[Path, typer.Option(help="Synthetic lake and truth (replaced)")] = WORK_DIR,
    output: Annotated[Path, typer.Option(help="Where the JSON results go")] = RESULTS_PATH,
) -> None:
    """Benchmark the recommender job on a synthetic lake with known tastes: time, memory,
    each model's test metrics beside popularity, and genre-taste recovery."""
    logging.basicConfig(level=logging.WARNING)
    settings = Settings(
        lake_dir=str(work_dir / "lake"),
        spark_master="local[*]",
        spark_driver_memory=driver_memory,
        silver_pseudonymization_key=KEY,
    )
    result = run(settings, work_dir, interactions, users, titles, seed, full_grid)
    write_results(output, result)


if __name__ == "__main__":
    typer.run(main)
