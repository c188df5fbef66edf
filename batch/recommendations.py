"""Recommendations from gold: popularity, ALS on implicit and on explicit feedback
(Spark MLlib), content-based by genres, and a hybrid, chosen by one offline protocol.

``run(settings, spark)`` reads gold ``user_title_interactions`` and silver ``dim_titles``,
tunes every model on a validation split, scores each on the held-out test titles
(``batch/ranking.py``), appends the evaluations to ``gold.recommendation_evaluations``,
publishes the best model's top 10 per user to ``gold.recommendations`` (both through their
quality gates) and writes an HTML report. Policies, grid and contracts:
``batch/recommendations.yml``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from batch import quality, ranking
from batch.lake import Lake, exists, local_path
from batch.ranking import Protocol
from reelpulse.errors import ReelpulseError
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("reelpulse.batch.recommendations")

CONTRACT = Path(__file__).with_name("recommendations.yml")
MODELS = ("popularity", "als_implicit", "als_explicit", "content", "hybrid")
BASELINE = "popularity"
Params = dict[str, Any]


class NoFeedback(ReelpulseError):
    """There is nothing to learn from yet."""


def load_contract() -> dict[str, Any]:
    with CONTRACT.open() as handle:
        return dict(yaml.safe_load(handle))


@dataclass
class Data:
    """What every model sees: training feedback, the catalog and the cut-off."""

    train: DataFrame
    titles: DataFrame  # title_id, genres
    k: int
    grid: Mapping[str, Any] = field(default_factory=dict)

    def seen_max(self) -> int:
        from pyspark.sql import functions as F

        row = self.train.groupBy("user_id").count().agg(F.max("count")).first()
        return int(row[0] or 0) if row else 0


# --- models: each returns user_id, rank, title_id, score (top k, nothing seen in training) ---


def popularity(data: Data, params: Params) -> DataFrame:
    from pyspark.sql import functions as F

    popular = _popularity(data.train).orderBy(F.desc("score"), "title_id").limit(data.k + data.seen_max())
    users = data.train.select("user_id").distinct()
    return top_k(users.crossJoin(popular), data)


def _popularity(train: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return (
        train.where("relevant")
        .groupBy("title_id")
        .agg(F.countDistinct("user_id").cast("double").alias("score"))
    )


def als_implicit(data: Data, params: Params) -> DataFrame:
    return _als(data, params, implicit=True)


def als_explicit(data: Data, params: Params) -> DataFrame:
    return _als(data, params, implicit=False)


def _als(data: Data, params: Params, *, implicit: bool) -> DataFrame:
    """Spark MLlib ALS on integer ids (StringIndexer), top ``k + most seen`` per user from
    the factors, then the seen titles removed."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    rows = data.train if implicit else data.train.where(F.col("rating").isNotNull())
    indexer = StringIndexer(inputCols=["user_id", "title_id"], outputCols=["user", "item"]).fit(rows)
    als = ALS(
        userCol="user", itemCol="item", ratingCol="strength" if implicit else "rating",
        implicitPrefs=implicit, rank=int(params["rank"]), regParam=float(params["reg_param"]),
        alpha=float(params.get("alpha", 1.0)), maxIter=int(data.grid.get("max_iter", 10)),
        nonnegative=True, coldStartStrategy="drop", seed=7,
    )  # fmt: skip
    model = als.fit(indexer.transform(rows))
    titles = min(len(indexer.labelsArray[1]), data.k + data.seen_max())
    exploded = model.recommendForAllUsers(titles).select("user", F.explode("recommendations").alias("r"))
    scored = exploded.select(
        "user", F.col("r.item").alias("item"), F.col("r.rating").cast("double").alias("score")
    )
    return top_k(_labelled(scored, indexer.labelsArray), data)


def _labelled(scored: DataFrame, labels: list[list[str]]) -> DataFrame:
    """Integer ALS ids back to user and title ids."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    assert spark is not None
    users = spark.createDataFrame(list(enumerate(labels[0])), "user int, user_id string")
    items = spark.createDataFrame(list(enumerate(labels[1])), "item int, title_id string")
    return scored.join(users, "user").join(items, "item").select("user_id", "title_id", "score")


def content(data: Data, params: Params) -> DataFrame:
    """Genres as the link between a user and a title (see the contract):
    ``score = sum over the user's top genres g of P(g | user) * P(title | g)``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    genres = _title_genres(data.titles)
    liked = data.train.where("relevant").join(genres, "title_id")
    mass = liked.groupBy("user_id", "genre").agg(F.sum(F.col("strength") * F.col("weight")).alias("m"))
    user = Window.partitionBy("user_id")
    strongest = user.orderBy(F.desc("m"), "genre")
    profile = (
        mass.withColumn("p_genre", F.col("m") / F.sum("m").over(user))
        .withColumn("_r", F.row_number().over(strongest))
        .where(F.col("_r") <= int(params["top_genres"]))
    )
    per_genre = _title_given_genre(data, float(params["popularity_exponent"]))
    scores = profile.join(per_genre, "genre")
    scored = scores.groupBy("user_id", "title_id").agg(
        F.sum(F.col("p_genre") * F.col("p_title")).alias("score"), F.max("_popularity").alias("_popularity")
    )
    return top_k(scored, data, tie_break="_popularity")


def _title_given_genre(data: Data, exponent: float) -> DataFrame:
    """``genre, title_id, p_title, _popularity``: P(title | genre), each title of the genre
    weighing its share of the genre times (1 + popularity) ** exponent."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    popular = _popularity(data.train).withColumnRenamed("score", "_popularity")
    weighted = (
        _title_genres(data.titles)
        .join(popular, "title_id", "left")
        .withColumn(
            "_w", F.col("weight") * F.pow(1.0 + F.coalesce(F.col("_popularity"), F.lit(0.0)), exponent)
        )
    )
    genre = Window.partitionBy("genre")
    shares = weighted.withColumn("p_title", F.col("_w") / F.sum("_w").over(genre))
    cap = int(data.grid.get("titles_per_genre", 200))  # the likeliest titles of a genre only
    ranked = shares.withColumn("_r", F.row_number().over(genre.orderBy(F.desc("p_title"), "title_id")))
    return ranked.where(F.col("_r") <= cap).select("genre", "title_id", "p_title", "_popularity")


def _title_genres(titles: DataFrame) -> DataFrame:
    """``title_id, genre, weight``: a title's genres, its weight split evenly over them."""
    from pyspark.sql import functions as F

    weight = 1.0 / F.size("genres").cast("double")
    return titles.where(F.size("genres") > 0).select(
        "title_id", F.explode("genres").alias("genre"), weight.alias("weight")
    )


def hybrid(data: Data, params: Params, *, als_params: Params, content_params: Params) -> DataFrame:
    """Weighted rank fusion of the ALS (implicit) and content candidate lists."""
    from pyspark.sql import functions as F

    depth = int(data.grid.get("candidates", 50))
    deeper = Data(data.train, data.titles, depth, data.grid)
    weight = float(params["weight"])

    def rank_score(frame: DataFrame, name: str) -> DataFrame:
        return frame.select("user_id", "title_id", (1.0 - (F.col("rank") - 1) / depth).alias(name))

    fused = rank_score(als_implicit(deeper, als_params), "a").join(
        rank_score(content(deeper, content_params), "c"), ["user_id", "title_id"], "full"
    )
    score = weight * F.coalesce(F.col("a"), F.lit(0.0)) + (1 - weight) * F.coalesce(F.col("c"), F.lit(0.0))
    return top_k(fused.select("user_id", "title_id", score.alias("score")), data, seen_removed=True)


def top_k(
    candidates: DataFrame, data: Data, *, tie_break: str | None = None, seen_removed: bool = False
) -> DataFrame:
    """The best ``k`` candidates per user that the user has not seen in training."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if not seen_removed:
        candidates = candidates.join(
            data.train.select("user_id", "title_id"), ["user_id", "title_id"], "left_anti"
        )
    order: list[Column | str] = [F.desc("score"), *([F.desc_nulls_last(tie_break)] if tie_break else [])]
    order.append("title_id")
    ranked = candidates.withColumn("rank", F.row_number().over(Window.partitionBy("user_id").orderBy(*order)))
    return ranked.where(F.col("rank") <= data.k).select(
        "user_id", "rank", "title_id", F.col("score").cast("double")
    )


# --- selection --------------------------------------------------------------------------------


@dataclass
class Evaluated:
    """One model's chosen parameters and scores."""

    model: str
    params: Params
    validation_ndcg: float
    test: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0


Recommender = Callable[[Data, Params], "DataFrame"]


def recommender(model: str, chosen: Mapping[str, Params]) -> Recommender:
    """The model's function; the hybrid uses the ALS and content parameters chosen so far."""
    simple: dict[str, Recommender] = {
        "popularity": popularity,
        "als_implicit": als_implicit,
        "als_explicit": als_explicit,
        "content": content,
    }
    if model in simple:
        return simple[model]

    def fused(data: Data, params: Params) -> DataFrame:
        return hybrid(data, params, als_params=chosen["als_implicit"], content_params=chosen["content"])

    return fused


def select(
    data_fit: Data, validation: DataFrame, grid: Mapping[str, Any], protocol: Protocol, catalog: int
) -> dict[str, Evaluated]:
    """Per model, the grid's parameters with the best validation nDCG@k (models in the
    order of ``MODELS``, so the hybrid fuses the ALS and content already chosen)."""
    chosen: dict[str, Evaluated] = {}
    for model in MODELS:
        best: Evaluated | None = None
        for params in grid.get(model) or [{}]:
            recs = recommender(model, {m: e.params for m, e in chosen.items()})(data_fit, dict(params))
            ndcg = ranking.evaluate(recs, validation, protocol, catalog)["ndcg_at_k"]
            log.info("validation: %s %s nDCG@%d = %.4f", model, params, protocol.k, ndcg)
            if best is None or ndcg > best.validation_ndcg:
                best = Evaluated(model, dict(params), ndcg)
        assert best is not None
        chosen[model] = best
    return chosen


def score_on_test(
    chosen: dict[str, Evaluated], data: Data, test: DataFrame, protocol: Protocol, catalog: int
) -> None:
    params = {m: e.params for m, e in chosen.items()}
    for model, evaluated in chosen.items():
        started = time.perf_counter()
        recs = recommender(model, params)(data, evaluated.params).cache()
        recs.count()
        evaluated.train_seconds = time.perf_counter() - started
        evaluated.test = ranking.evaluate(recs, test, protocol, catalog)
        recs.unpersist()
        log.info("test: %s nDCG@%d = %.4f", model, protocol.k, evaluated.test["ndcg_at_k"])


def best_model(chosen: Mapping[str, Evaluated]) -> str:
    """The model with the best validation nDCG (ties: the earlier, simpler, in MODELS)."""
    return max(MODELS, key=lambda m: (chosen[m].validation_ndcg, -MODELS.index(m)))


# --- the job ----------------------------------------------------------------------------------


@dataclass
class Result:
    run_id: str
    published: str
    evaluated: dict[str, Evaluated]
    users: int
    report: str


def run(
    settings: Settings,
    spark: SparkSession,
    *,
    protocol: Protocol | None = None,
    gate: quality.Gate | None = None,
    grid: Mapping[str, Any] | None = None,
) -> Result:
    """Tune, evaluate and publish (see the module docstring). ``grid``: the parameters to
    try, by default the contract's."""
    from pyspark.sql import functions as F

    protocol = protocol or Protocol()
    lake = Lake(settings.lake_dir)
    grid = grid or load_contract()["grid"]
    feedback, titles = _inputs(spark, lake)
    catalog = titles.select("title_id").union(feedback.select("title_id")).distinct().count()
    train, test = ranking.split(feedback, protocol)
    fit, validation = ranking.split(
        train, Protocol(protocol.k, protocol.test_share, protocol.split, protocol.seed + 1)
    )
    chosen = select(Data(fit, titles, protocol.k, grid), validation, grid, protocol, catalog)
    score_on_test(chosen, Data(train, titles, protocol.k, grid), test, protocol, catalog)
    run_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    published = best_model(chosen)
    generated_at = F.lit(dt.datetime.now(dt.UTC)).cast("timestamp")
    params = {m: e.params for m, e in chosen.items()}
    everyone = Data(feedback, titles, protocol.k, grid)
    recs = recommender(published, params)(everyone, chosen[published].params).withColumn(
        "model_version", F.lit(f"{published}@{run_id}")
    )
    cold = _cold_start(spark, lake, everyone, run_id)
    frame = recs.unionByName(cold).select(*_columns("recommendations"), generated_at.alias("generated_at"))
    gate = gate or quality.Gate(settings, spark)
    gate.publish_overwrite("gold", "recommendations", frame, expectations=_expectations("recommendations"))
    _append_evaluations(spark, gate, lake, run_id, published, chosen, protocol)
    users = spark.read.format("delta").load(lake.gold("recommendations")).select("user_id").distinct().count()
    report = write_report(lake, spark, run_id, published, chosen, protocol)
    return Result(run_id, published, chosen, users, report)


def _inputs(spark: SparkSession, lake: Lake) -> tuple[DataFrame, DataFrame]:
    from pyspark.sql import functions as F

    interactions_path = lake.gold("user_title_interactions")
    if not exists(spark, interactions_path):
        raise NoFeedback(f"{interactions_path} does not exist yet: run `reelpulse lake build` first")
    feedback = ranking.feedback(spark.read.format("delta").load(interactions_path)).cache()
    if feedback.isEmpty():
        raise NoFeedback("gold.user_title_interactions has no watched or rated titles yet")
    titles_path = lake.silver("dim_titles")
    if exists(spark, titles_path):
        titles = (
            spark.read.format("delta")
            .load(titles_path)
            .select("title_id", F.coalesce("genres", F.array()).alias("genres"))
        )
    else:
        titles = spark.createDataFrame([], "title_id string, genres array<string>")
    return feedback, titles.cache()


def _cold_start(spark: SparkSession, lake: Lake, data: Data, run_id: str) -> DataFrame:
    """Known users (silver dim_users) without feedback get the popularity list."""
    from pyspark.sql import functions as F

    schema = "user_id string, rank int, title_id string, score double, model_version string"
    path = lake.silver("dim_users")
    if not exists(spark, path):
        return spark.createDataFrame([], schema)
    known = spark.read.format("delta").load(path).select("user_id").distinct()
    users = known.join(data.train.select("user_id"), "user_id", "left_anti")
    popular = _popularity(data.train).orderBy(F.desc("score"), "title_id").limit(data.k).collect()
    version = f"{BASELINE}@{run_id}"
    ranked = [(rank, row.title_id, row.score, version) for rank, row in enumerate(popular, start=1)]
    listed = spark.createDataFrame(ranked, "rank int, title_id string, score double, model_version string")
    return users.crossJoin(listed).select(*(c.split()[0] for c in schema.split(", ")))


def _columns(table: str) -> list[str]:
    columns = [c["name"] for c in load_contract()["tables"][table]["columns"]]
    return [c for c in columns if c != "generated_at"]


def _expectations(table: str) -> list[dict[str, Any]]:
    return quality.contract_expectations(load_contract(), table)


def _append_evaluations(
    spark: SparkSession,
    gate: quality.Gate,
    lake: Lake,
    run_id: str,
    published: str,
    chosen: Mapping[str, Evaluated],
    protocol: Protocol,
) -> None:
    rows = [_evaluation_row(run_id, published, e, protocol) for e in chosen.values()]
    schema = ", ".join(
        f"`{c['name']}` {c['type']}"
        for c in load_contract()["tables"]["recommendation_evaluations"]["columns"]
    )
    frame = spark.createDataFrame(rows, schema)
    audited = gate.audit(
        "gold", "recommendation_evaluations", frame, _expectations("recommendation_evaluations")
    )
    audited.write.format("delta").mode("append").save(lake.gold("recommendation_evaluations"))
    gate.release("gold")


def _evaluation_row(run_id: str, published: str, e: Evaluated, protocol: Protocol) -> tuple[Any, ...]:
    t = e.test
    return (
        run_id, e.model, f"{e.model}@{run_id}", json.dumps(e.params, sort_keys=True), protocol.split,
        protocol.k, e.validation_ndcg, t["precision_at_k"], t["recall_at_k"], t["ndcg_at_k"], t["map_at_k"],
        t["catalog_coverage"], int(t["users"]), e.train_seconds, e.model == published,
        dt.datetime.now(dt.UTC),
    )  # fmt: skip


# --- reading them back -----------------------------------------------------------------------

FOR_USER = """
SELECT r.rank, r.title_id, t.name AS title, array_to_string(t.genres, ', ') AS genres,
       round(r.score, 4) AS score, r.model_version, r.generated_at
FROM gold.recommendations r LEFT JOIN silver.dim_titles t USING (title_id)
WHERE r.user_id = $user ORDER BY r.rank
"""


def for_user(lake_dir: str, pseudonym: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The published list of one user (by pseudonym), with the titles' names, via DuckDB."""
    from batch import sql as lake_sql

    if "gold.recommendations" not in lake_sql.lake_tables(lake_dir):
        raise NoFeedback(f"no gold.recommendations under {lake_dir}: run `reelpulse lake products` first")
    connection = lake_sql.lake_connection(lake_dir)
    try:
        result = connection.execute(FOR_USER, {"user": pseudonym})
        return [column[0] for column in result.description], result.fetchall()
    finally:
        connection.close()


# --- the report -------------------------------------------------------------------------------


def report_path(lake: Lake) -> str:
    return f"{lake.reports('recommendations')}/index.html"


def write_report(
    lake: Lake,
    spark: SparkSession,
    run_id: str,
    published: str,
    chosen: Mapping[str, Evaluated],
    protocol: Protocol,
) -> str:
    """The evaluation as HTML: this run's models against popularity, and earlier runs."""
    history = spark.read.format("delta").load(lake.gold("recommendation_evaluations"))
    earlier = history.where(f"run_id <> '{run_id}' AND published").orderBy("run_id").collect()
    path = local_path(report_path(lake))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_html(run_id, published, chosen, protocol, earlier))
    return str(path)


METRIC_NAMES = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "catalog_coverage")


def _html(
    run_id: str, published: str, chosen: Mapping[str, Evaluated], protocol: Protocol, earlier: list[Any]
) -> str:
    base = chosen[BASELINE].test["ndcg_at_k"]
    head = "".join(f"<th>{html.escape(m.replace('_at_k', f'@{protocol.k}'))}</th>" for m in METRIC_NAMES)
    rows = "".join(_html_row(e, published, base) for e in chosen.values())
    past = "".join(
        f"<tr><td>{html.escape(r.run_id)}</td><td>{html.escape(r.model)}</td><td>{r.ndcg_at_k:.4f}</td></tr>"
        for r in earlier
    )
    return REPORT.format(
        run_id=html.escape(run_id), published=html.escape(published), split=html.escape(protocol.split),
        k=protocol.k, head=head, rows=rows, past=past or "<tr><td colspan=3>none</td></tr>",
        policy=html.escape(load_contract()["policies"]["evaluation"]),
    )  # fmt: skip


def _html_row(e: Evaluated, published: str, base: float) -> str:
    cells = "".join(f"<td>{e.test[m]:.4f}</td>" for m in METRIC_NAMES)
    lift = f"{(e.test['ndcg_at_k'] / base - 1) * 100:+.0f}%" if base > 0 else "n/a"
    mark = " <strong>(published)</strong>" if e.model == published else ""
    params = html.escape(json.dumps(e.params, sort_keys=True))
    return (
        f"<tr><td>{html.escape(e.model)}{mark}</td><td><code>{params}</code></td>"
        f"<td>{e.validation_ndcg:.4f}</td>{cells}<td>{lift}</td><td>{int(e.test['users'])}</td>"
        f"<td>{e.train_seconds:.1f}</td></tr>"
    )


REPORT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Recommendations: evaluation {run_id}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}
td:first-child,td:nth-child(2){{text-align:left}}</style></head><body>
<h1>Recommendations: offline evaluation</h1>
<p>Run <code>{run_id}</code>; published model: <strong>{published}</strong>; split: {split}; k = {k}.</p>
<p>{policy}</p>
<table><thead><tr><th>model</th><th>chosen parameters</th><th>validation nDCG@{k}</th>{head}
<th>nDCG vs popularity</th><th>users</th><th>fit + recommend (s)</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Earlier runs (published model, test nDCG@{k})</h2>
<table><thead><tr><th>run</th><th>model</th><th>nDCG</th></tr></thead><tbody>{past}</tbody></table>
</body></html>
"""
