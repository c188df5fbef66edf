"""The lake as a person uses it: simulated traffic, then one ``reelpulse lake build``
(bronze, silver, gold, every quality gate), then ``reelpulse sql`` answers "top titles
by watch hours yesterday" and "CDN edges by rebuffer ratio" from gold, and
``reelpulse forget`` erases one viewer from every table and every old version.

The stack is this module's own: the answers are checked against the simulator's ground
truth (the edge it took down) and against silver, so no other test may add traffic.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from batch import lake
from batch import sql as lake_sql
from batch.lake import Lake
from reelpulse import registry
from reelpulse.cli import app as cli
from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from reelpulse.simulator import DEFAULT_START_MS, Incident, SimulationConfig, Simulator
from reelpulse.testing import running_stack, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

KEY = "e2e-test-pseudonymization-key-0123456789"
DAY_MS = 86_400_000
RUN_S = 600.0
CONFIG = SimulationConfig(
    seed=41, start_ms=DEFAULT_START_MS + 40 * DAY_MS - 300_000,  # 23:55: two days of data
    users=300, titles=40, rate=40.0, duration_s=RUN_S, heartbeat_cap=4,
    incidents=[Incident("edge_outage", start_s=0.0, duration_s=RUN_S)],
)  # fmt: skip
TOP_TITLES_YESTERDAY = lake_sql.QUESTIONS["top-titles-yesterday"]
EDGES_BY_REBUFFER_RATIO = lake_sql.QUESTIONS["edges-by-rebuffer-ratio"]


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with running_stack(tmp_path_factory.mktemp("e2e-stack")) as settings:
        yield settings.model_copy(
            update={
                "lake_dir": str(tmp_path_factory.mktemp("e2e-lake")),
                "spark_master": "local[2]",
                "silver_pseudonymization_key": SecretStr(KEY),
            }
        )


@pytest.fixture(scope="module")
def simulated(lake_settings: Settings) -> Simulator:
    contract = Contract(lake_settings.schemas_dir)
    ids = registry.lookup_ids(lake_settings, contract)  # running_stack provisioned the stack
    simulator = Simulator(CONFIG)
    with EventProducer(lake_settings, contract, schema_ids=ids) as producer:
        producer.produce_all(("title", t) for t in simulator.catalog())
        producer.produce_all(simulator.events())
    return simulator


def reelpulse(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a person runs it, in a process of its own (it starts Spark)."""
    env = {**os.environ, **settings_env(settings)}
    command = [sys.executable, "-m", "reelpulse", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, check=False)


@pytest.fixture(scope="module")
def built(lake_settings: Settings, simulated: Simulator) -> subprocess.CompletedProcess[str]:
    return reelpulse(lake_settings, "lake", "build")


def query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    return lake_sql.query(settings.lake_dir, sql)[1]


def pseudonym(user_id: str) -> str:
    return hmac.new(KEY.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def test_one_command_builds_every_layer_through_its_gates(
    lake_settings: Settings, built: subprocess.CompletedProcess[str]
) -> None:
    assert built.returncode == 0, built.stdout + built.stderr
    lake = Lake(lake_settings.lake_dir)
    assert (Path(lake.quality) / "docs" / "index.html").exists()
    runs = query(lake_settings, f"SELECT layer, success FROM delta_scan('{lake.quality}/runs')")
    assert {layer for layer, _ in runs} == {"silver", "gold"}
    assert all(success for _, success in runs)
    gold = {name for name in lake_sql.lake_tables(lake_settings.lake_dir) if name.startswith("gold.")}
    assert {"gold.title_engagement_daily", "gold.playback_quality_daily", "gold.cdn_edge_daily"} <= gold


def test_sql_answers_top_titles_by_watch_hours_yesterday(
    lake_settings: Settings, built: subprocess.CompletedProcess[str]
) -> None:
    answer = query(lake_settings, TOP_TITLES_YESTERDAY)
    from_silver = query(
        lake_settings,
        """SELECT title_id, round(sum(watch_time_ms) / 3600000, 3) AS watch_hours
        FROM silver.playback_sessions
        WHERE started_date = (SELECT max(started_date) FROM silver.playback_sessions) - INTERVAL 1 DAY
        GROUP BY title_id ORDER BY watch_hours DESC, title_id LIMIT 10""",
    )
    assert len(answer) == 10
    assert [(t, h) for t, _, h, _, _ in answer] == from_silver
    titles = Simulator(CONFIG).catalog()
    names = {t["title_id"]: t["name"] for t in titles}
    assert all(name == names[title_id] for title_id, name, *_ in answer)
    shown = CliRunner().invoke(
        cli, ["sql", "--question", "top-titles-yesterday"], env=settings_env(lake_settings)
    )
    assert shown.exit_code == 0, shown.output
    assert answer[0][1] in shown.output


def test_sql_ranks_the_edge_that_went_down_first_by_rebuffer_ratio(
    lake_settings: Settings, simulated: Simulator, built: subprocess.CompletedProcess[str]
) -> None:
    (outage,) = [i for i in simulated.truth.incidents if i["kind"] == "edge_outage"]
    ranking = query(lake_settings, EDGES_BY_REBUFFER_RATIO)
    assert ranking[0][0] == outage["target"], ranking
    assert ranking[0][1] > 2 * ranking[len(ranking) // 2][1]  # well above the typical edge


def test_duckdb_and_delta_rs_count_what_spark_published_in_gold(
    lake_settings: Settings, built: subprocess.CompletedProcess[str]
) -> None:
    """The gate counted each published gold table with Spark; the other readers agree."""
    from deltalake import DeltaTable

    lake = Lake(lake_settings.lake_dir)
    counted = dict(
        query(
            lake_settings,
            f"SELECT \"table\", row_count FROM delta_scan('{lake.quality}/runs') WHERE layer = 'gold'",
        )
    )
    published = {
        n: p for n, p in lake_sql.lake_tables(lake_settings.lake_dir).items() if n.startswith("gold.")
    }
    assert {f"gold.{name}" for name in counted} == set(published)
    for name, path in published.items():
        duck = query(lake_settings, f"SELECT count(*) FROM {name}")[0][0]
        assert duck == DeltaTable(path).to_pyarrow_table().num_rows == counted[name.removeprefix("gold.")], (
            name
        )


def holding(settings: Settings, path: str, needles: tuple[str, ...]) -> int:
    """Rows of the Delta table at ``path`` whose any column (bytes included) holds a needle."""
    where = " OR ".join(f"contains(CAST(t AS VARCHAR), '{needle}')" for needle in needles)
    return query(settings, f"SELECT count(*) FROM delta_scan('{path}') t WHERE {where}")[0][0]


def test_forget_erases_a_viewer_everywhere_and_the_gates_still_pass(
    lake_settings: Settings, simulated: Simulator, built: subprocess.CompletedProcess[str]
) -> None:
    from deltalake import DeltaTable

    by_pseudonym = {pseudonym(user): user for user in simulated.truth.users}
    ((most_active, sessions),) = query(
        lake_settings,
        "SELECT user_id, count(*) FROM silver.playback_sessions GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
    )
    user, before = (
        by_pseudonym[most_active],
        query(lake_settings, "SELECT count(*) FROM silver.playback_sessions"),
    )
    sessions_path = Lake(lake_settings.lake_dir).silver("playback_sessions")

    erased = reelpulse(lake_settings, "forget", user)
    assert erased.returncode == 0, erased.stdout + erased.stderr

    needles = (user, most_active)
    every = lake.tables(lake_settings.lake_dir, audit=True)
    assert len(every) > 20
    assert {t.qualified: holding(lake_settings, t.path, needles) for t in every} == {
        t.qualified: 0 for t in every
    }
    after = query(lake_settings, "SELECT count(*) FROM silver.playback_sessions")[0][0]
    assert after == before[0][0] - sessions  # everyone else is still there
    with pytest.raises(Exception, match="not found"):  # vacuumed: version 0's files are gone
        DeltaTable(sessions_path, version=0).to_pyarrow_table()
    (receipt,) = Path(Lake(lake_settings.lake_dir).erasure).glob("*.json")
    text = receipt.read_text()
    assert user not in text
    tables = {t["table"]: t for t in json.loads(text)["tables"]}
    assert tables["silver.playback_sessions"]["rows_deleted"] == sessions
    gates = query(
        lake_settings,
        f"SELECT count(*), bool_and(success) FROM delta_scan('{Lake(lake_settings.lake_dir).quality}/runs') "
        "WHERE layer = 'gold'",
    )[0]
    assert gates[0] > len(tables_in(lake_settings, "gold"))  # rebuilt through the gates, which passed
    assert gates[1]


def tables_in(settings: Settings, layer: str) -> list[str]:
    return [name for name in lake_sql.lake_tables(settings.lake_dir) if name.startswith(f"{layer}.")]
