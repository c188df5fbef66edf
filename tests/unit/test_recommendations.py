"""Recommendations: the evaluation protocol on hand-computed cases, and a whole run on a
lake that holds nothing but imported ratings (no playback at all)."""

from __future__ import annotations

import datetime as dt
import math
import random
from pathlib import Path

import pytest

from batch import ranking, recommendations
from batch.lake import Lake
from batch.ranking import Protocol
from reelpulse.settings import Settings

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
INTERACTIONS = (
    "user_id string, title_id string, sessions bigint, watch_time_ms bigint, completions bigint, "
    "max_completion_share double, last_watched_at timestamp, rating float, rated_at timestamp"
)


def interaction(
    user: str,
    title: str,
    *,
    minutes: float = 0,
    completions: int = 0,
    rating: float | None = None,
    day: int = 0,
) -> tuple:
    at = T0 + dt.timedelta(days=day)
    watched = minutes > 0
    return (
        user, title, int(watched), int(minutes * 60_000), completions, None,
        at if watched else None, rating, at if rating is not None else None,
    )  # fmt: skip


def recs(spark, rows: list[tuple[str, list[str]]]):
    flat = [(user, rank, title) for user, titles in rows for rank, title in enumerate(titles, start=1)]
    return spark.createDataFrame(flat, "user_id string, rank int, title_id string")


def held_out(spark, rows: list[tuple[str, str, bool]]):
    return spark.createDataFrame(rows, "user_id string, title_id string, relevant boolean")


def test_metrics_match_a_hand_computed_case(spark) -> None:
    recommended = recs(spark, [("u1", ["a", "b", "c", "z"]), ("u2", ["d", "e"]), ("u4", ["f"])])
    test = held_out(
        spark,
        [
            ("u1", "a", True), ("u1", "c", True), ("u1", "x", True),  # hits at ranks 1 and 3 of 3
            ("u2", "e", True),  # a hit at rank 2
            ("u3", "a", True),  # nothing recommended: scores 0
            ("u4", "f", False),  # nothing relevant held out: not evaluated
        ],
    )  # fmt: skip
    metrics = ranking.evaluate(recommended, test, Protocol(k=3), catalog_size=10)

    log2 = math.log2
    ndcg_u1 = (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4))
    ndcg_u2 = (1 / log2(3)) / (1 / log2(2))
    assert metrics["users"] == 3
    assert metrics["precision_at_k"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert metrics["recall_at_k"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert metrics["ndcg_at_k"] == pytest.approx((ndcg_u1 + ndcg_u2 + 0) / 3)
    assert metrics["map_at_k"] == pytest.approx(((1 / 1 + 2 / 3) / 3 + (1 / 2) / 1 + 0) / 3)
    assert metrics["catalog_coverage"] == pytest.approx(6 / 10), "a..f within the top 3; z is rank 4"


def test_feedback_strength_and_relevance(spark) -> None:
    rows = [
        interaction("u", "watched", minutes=59, completions=1),
        interaction("u", "loved", rating=4.5),
        interaction("u", "hated", minutes=10, rating=1.0),
        interaction("u", "never", rating=None),  # neither watched nor rated: no feedback
    ]
    got = {r.title_id: r for r in ranking.feedback(spark.createDataFrame(rows, INTERACTIONS)).collect()}
    assert set(got) == {"watched", "loved", "hated"}
    assert got["watched"].strength == pytest.approx(math.log1p(59) + 1)
    assert got["loved"].strength == pytest.approx(1.0)
    assert [got[t].relevant for t in ("watched", "loved", "hated")] == [True, True, False]


def test_split_holds_out_a_quarter_per_user_and_never_a_lone_title(spark) -> None:
    rows = [interaction(f"u{u}", f"t{t}", rating=4.0, day=t) for u in range(20) for t in range(8)]
    rows.append(interaction("lonely", "t0", rating=4.0))
    frame = ranking.feedback(spark.createDataFrame(rows, INTERACTIONS))
    for kind in ("random", "chronological"):
        train, test = ranking.split(frame, Protocol(split=kind, seed=3))
        held = {}
        for row in test.collect():
            held.setdefault(row.user_id, set()).add(row.title_id)
        assert "lonely" not in held, kind
        assert len(held) == 20, kind
        assert all(len(titles) == 2 for titles in held.values()), kind
        trained = {(r.user_id, r.title_id) for r in train.collect()}
        assert not trained & {(u, t) for u, ts in held.items() for t in ts}, kind
        assert len(trained) + 40 == len(rows), kind
        if kind == "chronological":
            assert all(titles == {"t6", "t7"} for titles in held.values()), "the latest titles are held out"
        else:
            assert len({frozenset(t) for t in held.values()}) > 5, "a random draw differs between users"


def test_a_ratings_only_lake_gets_recommendations_that_follow_the_tastes(
    spark, lake_settings: Settings
) -> None:
    """Two taste groups rate their genre high and the other low; the published model must
    beat popularity and keep each group in its genre."""
    lake, rng = Lake(lake_settings.lake_dir), random.Random(5)
    titles = [(f"t{i:02d}", ["drama" if i % 2 else "comedy"]) for i in range(40)]
    rows = []
    for u in range(120):
        liked = "drama" if u % 2 else "comedy"
        for title_id, genres in rng.sample(titles, 14):
            rating = rng.choice([4.0, 4.5, 5.0]) if genres[0] == liked else rng.choice([1.0, 1.5, 2.0])
            rows.append(interaction(f"user{u}", title_id, rating=rating, day=rng.randrange(30)))
    spark.createDataFrame(rows, INTERACTIONS).write.format("delta").mode("overwrite").save(
        lake.gold("user_title_interactions")
    )
    spark.createDataFrame(titles, "title_id string, genres array<string>").write.format("delta").mode(
        "overwrite"
    ).save(lake.silver("dim_titles"))
    users = [(f"user{u}",) for u in range(120)] + [("newcomer",)]
    spark.createDataFrame(users, "user_id string").write.format("delta").mode("overwrite").save(
        lake.silver("dim_users")
    )
    full = recommendations.load_contract()["grid"]  # one setting per model: choosing is not under test
    grid = {name: value[:1] if isinstance(value, list) else value for name, value in full.items()}

    result = recommendations.run(lake_settings, spark, grid=grid)

    scores = {m: e.test["ndcg_at_k"] for m, e in result.evaluated.items()}
    assert set(scores) == set(recommendations.MODELS)
    assert scores[result.published] > scores["popularity"], scores
    published = spark.read.format("delta").load(lake.gold("recommendations")).collect()
    by_user: dict[str, list] = {}
    for row in published:
        by_user.setdefault(row.user_id, []).append(row)
    assert len(by_user) == 121
    assert all(len(listed) == 10 for listed in by_user.values())
    assert {r.model_version.split("@")[0] for r in by_user["newcomer"]} == {"popularity"}
    seen = {(r[0], r[1]) for r in rows}
    assert not seen & {(r.user_id, r.title_id) for r in published}, "nothing the user already rated"
    genre = dict(titles)
    in_taste = [
        genre[r.title_id][0] == ("drama" if int(u[4:]) % 2 else "comedy")
        for u, rows_ in by_user.items() if u != "newcomer" for r in rows_ if r.rank <= 5
    ]  # fmt: skip
    assert sum(in_taste) / len(in_taste) > 0.9, "the top 5 stay in the user's genre"
    evaluations = spark.read.format("delta").load(lake.gold("recommendation_evaluations")).collect()
    assert sorted(r.model for r in evaluations) == sorted(recommendations.MODELS)
    assert [r.model for r in evaluations if r.published] == [result.published]
    report = Path(result.report).read_text()
    assert all(model in report for model in recommendations.MODELS)
    assert "(published)" in report
