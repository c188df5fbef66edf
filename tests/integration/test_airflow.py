"""Airflow runs the lake, as a person would see it: simulated traffic in a stack of this
module's own, then ``airflow dags test`` of reelpulse_ingest, reelpulse_refine and
reelpulse_products (through ``reelpulse airflow cli``, so with the environment that
``reelpulse airflow up`` gives Airflow), then the lake has gold, recommendations and A/B
results, and the runs are recorded as successes. Then ``reelpulse airflow up`` against
the same AIRFLOW_HOME, and Debian's headless Chromium logs in through the UI's login page
with the generated password and opens the DAG list and a successful run (screenshots in
artifacts/airflow/); ``reelpulse airflow down`` leaves no process behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import SecretStr

from batch import sql as lake_sql
from reelpulse import airflow, orchestration, registry
from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import PROJECT_ROOT, Settings
from reelpulse.simulator import SimulationConfig, Simulator
from reelpulse.testing import decoded_records, free_port, running_stack, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]  # ~6 min on an idle machine

KEY = "airflow-test-pseudonymization-key-0123"
CONFIG = SimulationConfig(seed=17, users=100, titles=30, rate=6.0, duration_s=480.0, heartbeat_cap=3)
# What this module checks is the orchestration; every event type's way through the lake is
# test_lake_e2e's. So the traffic keeps only what the products need (the catalog, playback,
# ratings, A/B exposures): a silver table less is a Spark MERGE and a quality gate less.
KEPT = frozenset({"playback_start", "playback_heartbeat", "playback_stop", "rating", "experiment_exposure"})
CHAIN = (orchestration.INGEST, orchestration.REFINE, orchestration.PRODUCTS)
SHOTS = PROJECT_ROOT / "artifacts" / "airflow"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def airflow_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with running_stack(tmp_path_factory.mktemp("airflow-stack")) as stack_settings:
        yield stack_settings.model_copy(
            update={
                "lake_dir": str(tmp_path_factory.mktemp("airflow-lake")),
                "spark_master": "local[2]",
                "spark_shuffle_partitions": 2,
                "silver_pseudonymization_key": SecretStr(KEY),
                "airflow_home": tmp_path_factory.mktemp("airflow-home"),
                "airflow_port": free_port(),
            }
        )


@pytest.fixture(scope="module")
def env(airflow_settings: Settings) -> dict[str, str]:
    """The environment a person's shell would have: the settings, and Airflow's two log
    servers on free ports (their defaults, 8793 and 8794, may be another Airflow's)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "REELPULSE_"))},
        **settings_env(airflow_settings),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "COLUMNS": "200",
    }


def reelpulse(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The command as a person runs it, in a session of its own: however the test ends
    (a timeout included), the command and everything it started (``airflow dags test``,
    its Spark JVM) are stopped."""
    command = [sys.executable, "-m", "reelpulse", *args]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        airflow.terminate_tree(process.pid, 10.0)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def ok(process: subprocess.CompletedProcess[str]) -> str:
    assert process.returncode == 0, (
        f"{process.args} failed:\n{process.stdout[-4000:]}\n{process.stderr[-6000:]}"
    )
    return process.stdout


@pytest.fixture(scope="module")
def chain(airflow_settings: Settings, env: dict[str, str]) -> dict[str, float]:
    """Traffic produced, Airflow's database created, and the three DAGs run by Airflow
    one after the other; returns each one's seconds."""
    contract = Contract(airflow_settings.schemas_dir)
    simulator = Simulator(CONFIG)
    with EventProducer(
        airflow_settings, contract, schema_ids=registry.lookup_ids(airflow_settings, contract)
    ) as producer:
        producer.produce_all(("title", t) for t in simulator.catalog())
        produced = producer.produce_all(e for e in simulator.events() if e[0] in KEPT)
    assert 1000 < produced < 5000
    ok(reelpulse(env, "airflow", "cli", "db", "migrate"))
    seconds = {}
    for dag_id in CHAIN:
        started = time.monotonic()
        ok(reelpulse(env, "airflow", "cli", "dags", "test", dag_id))
        seconds[dag_id] = time.monotonic() - started
        print(f"airflow dags test {dag_id}: {seconds[dag_id]:.0f}s")
    return seconds


def count(settings: Settings, table: str) -> int:
    return int(lake_sql.query(settings.lake_dir, f"SELECT count(*) FROM {table}")[1][0][0])


def test_the_chain_builds_every_gold_table_through_airflow(
    airflow_settings: Settings, chain: dict[str, float]
) -> None:
    tables = lake_sql.lake_tables(airflow_settings.lake_dir)
    gold = {name for name in tables if name.startswith("gold.")}
    core = {"gold.title_engagement_daily", "gold.playback_quality_daily", "gold.active_users_daily"}
    assert core <= gold
    assert {name: count(airflow_settings, name) > 0 for name in sorted(core)} == dict.fromkeys(
        sorted(core), True
    )
    gates = f"delta_scan('{airflow_settings.lake_dir}/_quality/runs')"
    runs = lake_sql.query(
        airflow_settings.lake_dir, f"SELECT layer, bool_and(success) FROM {gates} GROUP BY layer"
    )[1]
    assert {"silver", "gold"} <= {layer for layer, _ in runs}
    assert all(passed for _, passed in runs), runs
    assert (Path(airflow_settings.lake_dir) / "_quality" / "docs" / "index.html").exists()


def test_the_products_dag_publishes_recommendations_and_experiment_results(
    airflow_settings: Settings, chain: dict[str, float]
) -> None:
    assert count(airflow_settings, "gold.recommendations") > 0
    assert count(airflow_settings, "gold.recommendation_evaluations") > 0
    assert count(airflow_settings, "gold.experiment_results") > 0


def test_the_failure_alert_reaches_the_alerts_topic(airflow_settings: Settings) -> None:
    record = orchestration.failure_alert(
        "reelpulse_refine", "gold", "manual__test", 3, ValueError("gate failed"), 1_000, 2_000
    )
    orchestration.publish_alert(record, airflow_settings)
    alerts = [value for _, value in decoded_records(airflow_settings, "reelpulse.alerts")]
    assert record in alerts


# --------------------------------------------------------------------------- the UI


@pytest.fixture(scope="module")
def ui(airflow_settings: Settings, env: dict[str, str], chain: dict[str, float]) -> Iterator[airflow.Api]:
    """``reelpulse airflow up`` on the chain's AIRFLOW_HOME (DAGs left paused: nothing runs
    behind the test's back); ``reelpulse airflow down`` however the tests end."""
    try:
        started = time.monotonic()
        output = ok(reelpulse(env, "airflow", "up", "--no-unpause", "--timeout", "400", timeout=500))
        print(f"airflow up in {time.monotonic() - started:.0f}s")
        assert airflow.url(airflow_settings) in output
        assert airflow.USER in output
        yield airflow.Api(airflow_settings)
    finally:
        reelpulse(env, "airflow", "down", timeout=180)


def test_the_runs_are_recorded_as_successes(ui: airflow.Api) -> None:
    for dag_id in CHAIN:
        states = [run["state"] for run in ui.runs(dag_id)]
        assert states == ["success"], dag_id


def test_each_table_written_has_its_asset_event_with_its_rows(ui: airflow.Api) -> None:
    events: dict[str, dict[str, Any]] = {}
    for event in ui.asset_events():
        events.setdefault(event["name"], event)  # newest first
    bronze = {n.removeprefix("bronze.") for n in events if n.startswith("bronze.")}
    assert bronze == set(KEPT) | {"title"}, "only the tables the ingest appended to"
    assert all(events[f"bronze.{t}"]["extra"]["rows"] > 0 for t in bronze)
    assert events["bronze.playback_start"]["source_dag_id"] == orchestration.INGEST
    silver = {n.removeprefix("silver.") for n in events if n.startswith("silver.")}
    assert bronze | {"playback_sessions", "dim_titles", "dim_users", "dim_devices"} <= silver
    assert "dim_cdn_edges" not in silver, "no cdn_request was produced"
    assert events["silver.rating"]["extra"]["merged"] > 0
    gold = {n.removeprefix("gold.") for n in events if n.startswith("gold.")}
    assert set(orchestration.GOLD_TABLES) | set(orchestration.PRODUCT_TABLES) == gold
    assert events["gold.title_engagement_daily"]["extra"]["rows"] > 0


def test_status_shows_the_components_and_the_runs(env: dict[str, str], ui: airflow.Api) -> None:
    output = ok(reelpulse(env, "airflow", "status"))
    assert "scheduler" in output
    assert all(dag_id in output for dag_id in orchestration.DAG_IDS)


def test_a_person_logs_in_and_sees_the_dags_and_a_successful_run(
    airflow_settings: Settings, ui: airflow.Api, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    (refine,) = ui.runs(orchestration.REFINE)
    password = airflow.password(airflow_settings)
    assert password, "SimpleAuthManager generated the admin password into AIRFLOW_HOME"
    SHOTS.mkdir(parents=True, exist_ok=True)
    base = airflow.url(airflow_settings)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/dags")
            expect(page).to_have_url(re.compile(r"/auth/login"))  # not logged in yet
            page.get_by_label(re.compile("username", re.I)).fill(airflow.USER)
            page.get_by_label(re.compile("password", re.I)).fill(password)
            page.get_by_role("button", name=re.compile("sign in|log ?in", re.I)).click()
            page.wait_for_url(re.compile(r"/dags"))
            for dag_id in orchestration.DAG_IDS:
                expect(page.get_by_text(dag_id, exact=True).first).to_be_visible()
            page.screenshot(path=str(SHOTS / "dags.png"), full_page=True)

            page.goto(f"{base}/dags/{orchestration.REFINE}/runs/{refine['dag_run_id']}")
            expect(page.get_by_text(re.compile(r"^success$", re.I)).first).to_be_visible()
            expect(page.get_by_text(orchestration.REFINE).first).to_be_visible()
            page.screenshot(path=str(SHOTS / "run.png"), full_page=True)
        finally:
            browser.close()
    assert (SHOTS / "dags.png").stat().st_size > 10_000
    assert (SHOTS / "run.png").stat().st_size > 10_000


def airflow_processes(settings: Settings) -> list[str]:
    """Every process on this machine that runs with this test's AIRFLOW_HOME."""
    home = str(airflow.home(settings))
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if process.environ().get("AIRFLOW_HOME") == home:
                found.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:120]}")
        except psutil.Error:
            continue
    return found


def test_down_stops_airflow_and_every_process_it_started(
    airflow_settings: Settings, env: dict[str, str], ui: airflow.Api
) -> None:
    assert airflow_processes(airflow_settings), "Airflow runs before"
    assert "stopped: airflow" in ok(reelpulse(env, "airflow", "down", timeout=180))
    assert airflow_processes(airflow_settings) == []
    assert airflow.running_pid(airflow_settings) is None
    assert "not running" in ok(reelpulse(env, "airflow", "down"))
