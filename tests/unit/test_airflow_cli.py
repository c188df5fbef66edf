"""``reelpulse airflow``'s pure parts: the environment Airflow's processes get, its home,
the generated password, and stopping a whole process tree (real processes, no Airflow)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from reelpulse import airflow
from reelpulse.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", lake_dir=str(tmp_path / "lake"), airflow_port=18123)


def test_airflow_home_defaults_to_the_state_dir(settings: Settings, tmp_path: Path) -> None:
    assert airflow.home(settings) == (tmp_path / "state" / "airflow").resolve()
    chosen = settings.model_copy(update={"airflow_home": tmp_path / "elsewhere"})
    assert airflow.home(chosen) == (tmp_path / "elsewhere").resolve()


def test_every_airflow_process_gets_the_settings_the_home_and_the_venv(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", "/somewhere/else")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "4")  # a person's own tuning wins
    airflow.prepare(settings)
    env = airflow.environment(settings)
    assert env["AIRFLOW_HOME"] == str(airflow.home(settings))
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(settings.airflow_dags_dir.resolve())
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert (env["AIRFLOW__API__HOST"], env["AIRFLOW__API__PORT"]) == ("127.0.0.1", "18123")
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:18123"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["REELPULSE_LAKE_DIR"] == settings.lake_dir
    assert env["REELPULSE_STATE_DIR"] == str(settings.state_dir)
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64


def test_the_jwt_secret_is_made_once_and_kept_private(settings: Settings) -> None:
    airflow.prepare(settings)
    secret = airflow.home(settings) / airflow.JWT_SECRET_FILE
    first = secret.read_text()
    airflow.prepare(settings)
    assert secret.read_text() == first
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_the_password_is_the_one_airflow_generated(settings: Settings) -> None:
    assert airflow.password(settings) is None
    home = airflow.prepare(settings)
    (home / airflow.PASSWORDS_FILE).write_text(json.dumps({"admin": "s3cret-generated"}) + "\n")
    assert airflow.password(settings) == "s3cret-generated"


def test_a_stale_pid_file_is_not_airflow(settings: Settings) -> None:
    pid_file = airflow.SERVICE.pid_file(settings)
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(str(os.getpid()))  # alive, but not airflow standalone
    assert airflow.running_pid(settings) is None
    assert not pid_file.exists()
    assert airflow.stop(settings) is False


def test_terminate_tree_stops_a_process_its_children_and_their_children() -> None:
    script = "sleep 60 & (sleep 60 & sleep 60) & wait"
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(psutil.Process(process.pid).children(recursive=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    assert len(tree) >= 4
    airflow.terminate_tree(process.pid, 10.0)
    process.wait(5)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_terminate_tree_kills_what_ignores_sigterm() -> None:
    process = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)
    started = time.monotonic()
    airflow.terminate_tree(process.pid, 1.0)
    process.wait(5)
    assert time.monotonic() - started < 15


class RecordedApi:
    """The Airflow API as ``follow`` sees it, answering from recorded responses."""

    def __init__(self, emitted: list[str], refine_runs: list[dict]) -> None:
        self.emitted, self.refine_runs = emitted, refine_runs

    def asset_events(self, limit: int = 200, **filters: str) -> list[dict]:
        assert filters == {"source_dag_id": "reelpulse_ingest", "source_run_id": "manual__1"}
        return [{"name": name} for name in self.emitted]

    def runs(self, dag_id: str, limit: int = 5, **filters: str) -> list[dict]:
        assert dag_id == "reelpulse_refine"
        return self.refine_runs

    def run(self, dag_id: str, run_id: str) -> dict:
        return next(r for r in self.refine_runs if r["dag_run_id"] == run_id)


INGESTED = {"dag_id": "reelpulse_ingest", "dag_run_id": "manual__1", "state": "success", "start_date": "t0"}
REFINED = {"dag_id": "reelpulse_refine", "dag_run_id": "asset_triggered__1", "state": "success"}


def test_trigger_waits_for_the_refine_an_ingest_of_new_rows_started() -> None:
    api = RecordedApi(["bronze.playback_start", "bronze._quarantine"], [REFINED])
    assert list(airflow.follow(api, INGESTED, 5.0)) == [REFINED]  # type: ignore[arg-type]


def test_trigger_waits_for_no_refine_after_an_ingest_that_found_nothing_to_refine() -> None:
    for emitted in ([], ["bronze._quarantine"]):  # nothing new; only records quarantined
        api = RecordedApi(emitted, [])
        assert list(airflow.follow(api, INGESTED, 0.1)) == []  # type: ignore[arg-type]
