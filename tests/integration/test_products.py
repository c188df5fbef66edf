"""What the lake feeds, as a person uses it: simulated traffic with known tastes and a
known experiment effect, plus a ratings file imported on top; one ``reelpulse lake
build`` and one ``reelpulse lake products``; then ``reelpulse recommend`` and the reports.

Checked against the simulator's ground truth: the published model beats the popularity
baseline, its lists follow the users' latent genre tastes, and the experiment with a true
watch-time effect has an interval that covers it. The stack is this module's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from batch import sql as lake_sql
from batch.erasure import pseudonym
from batch.lake import Lake
from reelpulse import registry
from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import GroundTruth, SimulationConfig, Simulator
from reelpulse.testing import running_stack, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

KEY = "products-test-pseudonymization-key-0123"
CONFIG = SimulationConfig(
    seed=23, users=800, titles=150, rate=25.0, duration_s=8_000.0, heartbeat_cap=3, cdn_sample_rate=0.1
)
IMPORTED_USERS = 30
# "A clear margin": the published model's nDCG@10 at least this much above popularity's.
CLEAR_MARGIN = 1.2


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with running_stack(tmp_path_factory.mktemp("products-stack")) as settings:
        yield settings.model_copy(
            update={
                "lake_dir": str(tmp_path_factory.mktemp("products-lake")),
                "spark_master": "local[2]",
                "silver_pseudonymization_key": SecretStr(KEY),
            }
        )


def reelpulse(settings: Settings, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    command = [sys.executable, "-m", "reelpulse", *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=1500, check=False, cwd=cwd
    )


def ok(process: subprocess.CompletedProcess[str]) -> str:
    assert process.returncode == 0, (
        f"{process.args} failed:\n{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
    )
    return process.stdout


@pytest.fixture(scope="module")
def truth(lake_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> GroundTruth:
    """Traffic produced, a ratings file imported, the lake built and the products published."""
    contract = Contract(lake_settings.schemas_dir)
    ids = registry.lookup_ids(lake_settings, contract)
    simulator = Simulator(CONFIG)
    with EventProducer(lake_settings, contract, schema_ids=ids) as producer:
        producer.produce_all(("title", t) for t in simulator.catalog())
        producer.produce_all(simulator.events())
    ratings = tmp_path_factory.mktemp("import") / "ratings.csv"
    lines = ["userId,movieId,rating,timestamp"]
    start_s = CONFIG.start_ms // 1000 + 3600  # inside the simulated hours: not late for silver
    lines += [f"{u},{m},{1 + (u + m) % 5},{start_s + m}" for u in range(IMPORTED_USERS) for m in range(12)]
    ratings.write_text("\n".join(lines) + "\n")
    ok(
        reelpulse(
            lake_settings, "import", "ratings", str(ratings), "--user-prefix", "ml-", "--title-prefix", "ml-"
        )
    )
    ok(reelpulse(lake_settings, "lake", "build"))
    ok(reelpulse(lake_settings, "lake", "products"))
    return simulator.truth


def rows(settings: Settings, sql: str) -> list[dict[str, Any]]:
    columns, found = lake_sql.query(settings.lake_dir, sql)
    return [dict(zip(columns, row, strict=True)) for row in found]


def test_the_published_model_beats_popularity_by_a_clear_margin(lake_settings: Settings, truth) -> None:
    latest = rows(
        lake_settings,
        "SELECT * FROM gold.recommendation_evaluations WHERE run_id = "
        "(SELECT max(run_id) FROM gold.recommendation_evaluations)",
    )
    by_model = {r["model"]: r for r in latest}
    assert set(by_model) == {"popularity", "als_implicit", "als_explicit", "content", "hybrid"}
    published = [r for r in latest if r["published"]]
    assert len(published) == 1
    chosen = published[0]
    print({m: round(r["ndcg_at_k"], 4) for m, r in by_model.items()}, "published:", chosen["model"])
    assert chosen["model"] != "popularity"
    assert chosen["ndcg_at_k"] >= CLEAR_MARGIN * by_model["popularity"]["ndcg_at_k"]
    assert chosen["users"] > 0.5 * CONFIG.users, "most simulated viewers are evaluated"


def favourite_share(truth: GroundTruth, lists: dict[str, list[str]]) -> float:
    """Share of listed titles that carry the user's favourite latent genre."""
    hits = total = 0
    for user_id, titles in lists.items():
        tastes = truth.users[user_id]["tastes"]
        favourite = max(tastes, key=tastes.get)
        hits += sum(favourite in truth.titles[t]["genres"] for t in titles if t in truth.titles)
        total += len(titles)
    return hits / total


def test_recommendations_recover_the_latent_genre_tastes(lake_settings: Settings, truth) -> None:
    key = KEY.encode()
    users = {pseudonym(u, key): u for u in truth.users}
    published = rows(
        lake_settings, "SELECT user_id, title_id FROM gold.recommendations ORDER BY user_id, rank"
    )
    lists: dict[str, list[str]] = {}
    for row in published:
        if row["user_id"] in users:
            lists.setdefault(users[row["user_id"]], []).append(row["title_id"])
    assert len(lists) > 0.9 * len(truth.users)
    popular = [
        r["title_id"]
        for r in rows(
            lake_settings,
            "SELECT title_id FROM gold.user_title_interactions WHERE watch_time_ms > 0 "
            "GROUP BY title_id ORDER BY count(DISTINCT user_id) DESC, title_id LIMIT 10",
        )
    ]
    model = favourite_share(truth, lists)
    baseline = favourite_share(truth, {u: popular for u in lists})
    print(f"favourite-genre share: published {model:.3f}, popularity {baseline:.3f}")
    assert model >= 1.5 * baseline, "the lists lean to each user's favourite genre, unlike popularity's"


def test_recommend_shows_a_viewer_titles_by_name_that_they_have_not_watched(
    lake_settings: Settings, truth
) -> None:
    user_id = sorted(truth.users)[0]
    subject = pseudonym(user_id, KEY.encode())
    output = ok(reelpulse(lake_settings, "recommend", user_id))
    listed = rows(
        lake_settings,
        f"SELECT r.title_id, t.name FROM gold.recommendations r JOIN silver.dim_titles t USING (title_id) "
        f"WHERE r.user_id = '{subject}' ORDER BY rank",
    )
    assert len(listed) == 10
    assert all(row["name"] in output for row in listed)
    watched = rows(
        lake_settings,
        f"SELECT title_id FROM gold.user_title_interactions WHERE user_id = '{subject}'",
    )
    assert not {r["title_id"] for r in listed} & {r["title_id"] for r in watched}
    unknown = reelpulse(lake_settings, "recommend", "nobody-ever")
    assert unknown.returncode == 1
    assert "never seen this account" in unknown.stdout


def test_imported_ratings_get_recommendations_too(lake_settings: Settings, truth) -> None:
    key = KEY.encode()
    imported = {pseudonym(f"ml-{u}", key) for u in range(IMPORTED_USERS)}
    found = rows(lake_settings, "SELECT user_id, count(*) AS n FROM gold.recommendations GROUP BY user_id")
    counts = {r["user_id"]: r["n"] for r in found if r["user_id"] in imported}
    assert counts == dict.fromkeys(imported, 10)


def test_the_evaluation_report_lists_every_model(lake_settings: Settings, truth) -> None:
    report = Path(Lake(lake_settings.lake_dir).root) / "_reports" / "recommendations" / "index.html"
    text = report.read_text()
    assert "(published)" in text
    assert all(m in text for m in ("popularity", "als_implicit", "als_explicit", "content", "hybrid"))


def test_the_experiment_with_a_true_effect_is_covered_by_its_interval(lake_settings: Settings, truth) -> None:
    experiment = next(e for e in truth.experiments if e["true_effect"] != 0)
    results = rows(
        lake_settings,
        "SELECT * FROM gold.experiment_results WHERE experiment_id = "
        f"'{experiment['experiment_id']}' AND metric = 'watch_time_ms' AND method = 'welch'",
    )
    assert len(results) == 1, json.dumps(results, default=str)
    result = results[0]
    low, high = result["relative_ci_low"], result["relative_ci_high"]
    print(f"{experiment['experiment_id']}: true {experiment['true_effect']:+.0%}, CI {low:+.3f}..{high:+.3f}")
    assert low <= experiment["true_effect"] <= high
    report = (
        Path(Lake(lake_settings.lake_dir).root)
        / "_reports"
        / "experiments"
        / f"{experiment['experiment_id']}.html"
    )
    assert report.exists()
