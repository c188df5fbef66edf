"""Offline evaluation of top-k recommendations: one protocol for every model.

* **Feedback** (:func:`feedback`): one row per (user, title) from gold
  ``user_title_interactions``: an implicit strength (watching, completing, rating) and the
  explicit rating when there is one. A title is *relevant* to a user when the user rated it
  3.5 stars or more, or watched it without rating it (a low rating overrides watching).
* **Split** (:func:`split`): per user, 75 % of the user's titles train and 25 % are held
  out (``ceil(0.25 n)``, so a user with one title is training-only and not evaluated).
  ``random`` draws the held-out titles with a seeded hash, ``chronological`` holds out each
  user's latest titles (by last watch or rating time).
* **Metrics** (:func:`evaluate`): for every user with a relevant held-out title, the model's
  top ``k`` titles, never one seen in training, against the relevant held-out titles:
  precision@k, recall@k, nDCG@k (binary gains) and MAP@k, computed by Spark MLlib's
  ``RankingEvaluator``, averaged over users (a user the model has nothing for scores 0);
  and catalog coverage, the share of the catalog recommended to at least one user.

The definitions of MLlib's metrics, as used here (``R`` the relevant titles, ``r_i`` the
title at rank ``i`` of ``k``):
precision@k = |top-k ∩ R| / k;  recall@k = |top-k ∩ R| / |R|;
nDCG@k = Σ_{i: r_i∈R} 1/log2(i+1)  /  Σ_{i ≤ min(k,|R|)} 1/log2(i+1);
MAP@k = Σ_{i: r_i∈R} (hits up to i / i)  /  min(k, |R|).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

Split = Literal["random", "chronological"]
METRICS: dict[str, Any] = {  # our name: MLlib's
    "precision_at_k": "precisionAtK",
    "recall_at_k": "recallAtK",
    "ndcg_at_k": "ndcgAtK",
    "map_at_k": "meanAveragePrecisionAtK",
}
RELEVANT_RATING = 3.5


@dataclass(frozen=True)
class Protocol:
    """How models are compared: held-out share per user, split kind, seed and cut-off."""

    k: int = 10
    test_share: float = 0.25
    split: Split = "random"
    seed: int = 42


def feedback(interactions: DataFrame) -> DataFrame:
    """``user_id, title_id, strength, rating, relevant, at`` from ``user_title_interactions``.

    strength = ln(1 + minutes watched) + completions + 1 if rated: what implicit ALS and the
    content profile weigh a title by (every row has strength >= 1 when rated or watched)."""
    from pyspark.sql import functions as F

    minutes = F.coalesce(F.col("watch_time_ms"), F.lit(0)) / 60_000.0
    rated = F.col("rating").isNotNull()
    watched = F.coalesce(F.col("watch_time_ms"), F.lit(0)) > 0
    return interactions.select(
        "user_id",
        "title_id",
        (F.log1p(minutes) + F.coalesce(F.col("completions"), F.lit(0)) + rated.cast("double")).alias(
            "strength"
        ),
        F.col("rating").cast("double").alias("rating"),
        F.when(rated, F.col("rating") >= RELEVANT_RATING).otherwise(watched).alias("relevant"),
        F.greatest(F.col("last_watched_at"), F.col("rated_at")).alias("at"),
    ).where(watched | rated)


def split(frame: DataFrame, protocol: Protocol) -> tuple[DataFrame, DataFrame]:
    """``(train, test)``: per user, the last ``ceil(test_share * n)`` titles in the split's
    order are held out."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    user = Window.partitionBy("user_id")
    ordered = user.orderBy(_order(protocol), "title_id")
    ranked = frame.withColumn("_n", F.count("*").over(user)).withColumn("_i", F.row_number().over(ordered))
    held_out = F.col("_i") > F.col("_n") - F.ceil(F.col("_n") * protocol.test_share)
    test = held_out & (F.col("_n") > 1)
    ranked = ranked.withColumn("_test", test).cache()
    train = ranked.where(~F.col("_test")).drop("_n", "_i", "_test")
    return train, ranked.where(F.col("_test")).drop("_n", "_i", "_test")


def _order(protocol: Protocol) -> Column:
    from pyspark.sql import functions as F

    if protocol.split == "chronological":
        return F.col("at").asc_nulls_first()
    return F.xxhash64(F.lit(protocol.seed), F.col("user_id"), F.col("title_id"))


def evaluate(
    recommended: DataFrame, test: DataFrame, protocol: Protocol, catalog_size: int
) -> dict[str, float]:
    """Metrics of ``recommended`` (``user_id, rank, title_id``) against the relevant titles of
    ``test``, over every user with at least one: see the module docstring."""
    from pyspark.ml.evaluation import RankingEvaluator
    from pyspark.sql import functions as F

    labels = test.where("relevant").groupBy("user_id").agg(F.collect_set("title_id").alias("_relevant"))
    # The lists are read twice (the ranking metrics, the coverage): computed once, since
    # computing them is fitting the model.
    top_k = recommended.where(F.col("rank") <= protocol.k).select("user_id", "rank", "title_id").cache()
    top = top_k.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("rank", "title_id"))).alias("_top")
    )
    joined = labels.join(top, "user_id", "left").select(
        F.coalesce(F.col("_top.title_id"), F.array().cast("array<string>")).alias("_top"), "_relevant"
    )
    scored = _as_numbers(joined).cache()
    try:
        metrics = {
            name: float(RankingEvaluator(metricName=mllib, k=protocol.k).evaluate(scored))
            for name, mllib in METRICS.items()
        }
        metrics["users"] = float(scored.count())
        titles = top_k.select("title_id").distinct().count()
    finally:
        scored.unpersist()
        top_k.unpersist()
    metrics["catalog_coverage"] = titles / catalog_size if catalog_size else 0.0
    return metrics


def _as_numbers(joined: DataFrame) -> DataFrame:
    """``prediction`` and ``label`` as arrays of doubles (RankingEvaluator's input): every
    title id gets a number by a stable hash (only equality matters)."""
    from pyspark.sql import functions as F

    def numbers(column: str) -> Column:
        return F.transform(F.col(column), lambda t: F.xxhash64(t).cast("double"))

    return joined.select(numbers("_top").alias("prediction"), numbers("_relevant").alias("label"))
