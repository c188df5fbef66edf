"""The DAGs in dags/ as Airflow's DagBag parses them, and the pure part of their failure
alert. Parsing runs in a subprocess of its own (a throwaway AIRFLOW_HOME; sockets refused),
so this process never imports Airflow and the test sees exactly what a parse imports."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from batch import experiments, recommendations
from reelpulse import orchestration
from reelpulse.codec import compile_codec
from reelpulse.contract import Contract, decode
from reelpulse.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.unit

PARSE = r"""
import json, socket, sys
attempts = []
def refuse(self, address, *args):
    attempts.append(repr(address))
    raise OSError("no network while parsing DAGs")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
def seconds(value):
    return value.total_seconds() if value is not None else None
def task(t):
    return {
        "owner": t.owner, "retries": t.retries, "backoff": t.retry_exponential_backoff,
        "retry_delay": seconds(t.retry_delay), "max_retry_delay": seconds(t.max_retry_delay),
        "timeout": seconds(t.execution_timeout), "max_active_tis_per_dag": t.max_active_tis_per_dag,
        "callbacks": [f"{c.__module__}.{c.__name__}" for c in t.on_failure_callback or []],
        "outlets": [a.name for a in t.outlets], "upstream": sorted(t.upstream_task_ids),
    }
def describe(dag):
    try:
        dag.check_cycle()
        cycle = None
    except Exception as error:
        cycle = repr(error)
    condition = getattr(dag.timetable, "asset_condition", None)
    return {
        "tags": sorted(dag.tags), "doc_md": dag.doc_md, "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs, "timetable": type(dag.timetable).__name__,
        "cron": getattr(dag.timetable, "expression", None), "cycle": cycle,
        "schedule_any": type(condition).__name__ if condition is not None else None,
        "schedule_assets": [a.name for a in getattr(condition, "objects", [])],
        "tasks": {t.task_id: task(t) for t in dag.tasks},
    }
print(json.dumps({
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    "dags": {dag_id: describe(dag) for dag_id, dag in bag.dags.items()},
    "modules": sorted(sys.modules), "connections": attempts,
}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "REELPULSE_"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "REELPULSE_LAKE_DIR": str(home / "lake"),
    }
    result = subprocess.run(
        [sys.executable, "-c", PARSE, str(PROJECT_ROOT / "dags")],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_every_dag_file_parses_without_import_errors(parsed: dict[str, Any]) -> None:
    assert parsed["import_errors"] == {}
    assert set(parsed["dags"]) == set(orchestration.DAG_IDS)


def test_every_dag_has_tags_docs_and_one_run_at_a_time_without_catchup(parsed: dict[str, Any]) -> None:
    for dag_id, dag in parsed["dags"].items():
        assert "reelpulse" in dag["tags"], dag_id
        assert dag_id in (dag["doc_md"] or ""), dag_id
        assert dag["catchup"] is False, dag_id
        assert dag["max_active_runs"] == 1, dag_id
        assert dag["cycle"] is None, dag_id


def test_every_task_has_an_owner_retries_with_backoff_a_timeout_and_the_failure_alert(
    parsed: dict[str, Any],
) -> None:
    tasks = [(dag_id, t) for dag_id, dag in parsed["dags"].items() for t in dag["tasks"].values()]
    assert len(tasks) == 7
    for dag_id, task in tasks:
        assert task["owner"] == orchestration.OWNER, dag_id
        assert task["retries"] >= 1, dag_id
        assert task["backoff"] > 1.0, "a multiplier: Airflow 3.3 reads True as 1.0, a constant delay"
        assert 0 < task["retry_delay"] < task["max_retry_delay"], dag_id
        assert (task["timeout"] or 0) > 0, dag_id
        assert task["max_active_tis_per_dag"] == 1, (
            "no two runs (backfills too) write the same tables at once"
        )
        assert task["callbacks"] == ["reelpulse.orchestration.on_task_failure"], dag_id


def test_schedules_tasks_and_assets_chain_the_layers(parsed: dict[str, Any]) -> None:
    dags = parsed["dags"]
    assert (dags["reelpulse_ingest"]["cron"], dags["reelpulse_products"]["cron"]) == (
        "*/5 * * * *",
        "0 2 * * *",
    )
    assert dags["reelpulse_maintenance"]["cron"] == "0 4 * * 0"
    outlets = {
        (dag_id, task_id): task["outlets"]
        for dag_id, dag in dags.items()
        for task_id, task in dag["tasks"].items()
    }
    assert outlets == {
        ("reelpulse_ingest", "bronze"): ["reelpulse-bronze"],
        ("reelpulse_refine", "silver"): ["reelpulse-silver"],
        ("reelpulse_refine", "gold"): [f"gold.{t}" for t in orchestration.GOLD_TABLES],
        ("reelpulse_products", "recommendations"): [
            "gold.recommendations",
            "gold.recommendation_evaluations",
        ],
        ("reelpulse_products", "experiment_reports"): ["gold.experiment_results"],
        ("reelpulse_maintenance", "optimize"): [],
        ("reelpulse_maintenance", "vacuum"): [],
    }
    assert dags["reelpulse_refine"]["tasks"]["gold"]["upstream"] == ["silver"]
    assert dags["reelpulse_products"]["tasks"]["experiment_reports"]["upstream"] == ["recommendations"]
    assert dags["reelpulse_maintenance"]["tasks"]["vacuum"]["upstream"] == ["optimize"]


def test_refine_is_scheduled_on_any_bronze_event_table(parsed: dict[str, Any]) -> None:
    refine = parsed["dags"]["reelpulse_refine"]
    assert refine["timetable"] == "AssetTriggeredTimetable"
    assert refine["schedule_any"] == "AssetAny"
    assert refine["schedule_assets"] == [f"bronze.{t}" for t in orchestration.EVENT_TABLES]
    assert refine["schedule_assets"] == list(orchestration.REFINE_ON)


def test_the_table_lists_are_the_lakes_tables() -> None:
    from batch import bronze, gold

    contract = Contract(Settings(_env_file=None).schemas_dir)
    ingested = {e.name for e in contract if e.topic not in bronze.NOT_INGESTED}
    assert set(orchestration.EVENT_TABLES) == ingested
    assert set(orchestration.GOLD_TABLES) == set(gold.TABLES)


def test_gold_is_rebuilt_when_silver_wrote_or_a_person_asked() -> None:
    assert orchestration.gold_needed(["silver.login"], "asset_triggered")
    assert not orchestration.gold_needed([], "asset_triggered")
    assert not orchestration.gold_needed([], "scheduled")
    assert orchestration.gold_needed([], "manual")


def test_parsing_starts_no_spark_reads_no_lake_code_and_opens_no_connection(parsed: dict[str, Any]) -> None:
    modules = set(parsed["modules"])
    assert "pyspark" not in modules
    assert not {m for m in modules if m == "batch" or m.startswith("batch.")}, "batch/ is imported by tasks"
    assert "confluent_kafka" not in modules
    assert parsed["connections"] == []


def test_product_assets_are_the_tables_the_products_publish() -> None:
    published = {*recommendations.load_contract()["tables"], experiments.RESULTS}
    assert set(orchestration.PRODUCT_TABLES) == published


def test_assets_point_at_the_lake_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REELPULSE_LAKE_DIR", str(tmp_path / "lake"))
    assert orchestration.asset_uri("bronze") == f"file://{tmp_path}/lake/bronze"
    assert orchestration.asset_uri("gold.recommendations") == f"file://{tmp_path}/lake/gold/recommendations"
    monkeypatch.setenv("REELPULSE_LAKE_DIR", "s3a://bucket/lake/")
    assert orchestration.asset_uri("silver") == "s3a://bucket/lake/silver"


# --------------------------------------------------------------------------- failure alert

NOW_MS = 1_790_000_000_000


def failed_context(error: BaseException) -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="reelpulse_refine", task_id="gold", run_id="asset_triggered__2026-11-28T10:00:00+00:00",
        try_number=3, start_date=dt.datetime.fromtimestamp(NOW_MS / 1000 - 90, dt.UTC),
    )  # fmt: skip
    return {"ti": ti, "exception": error}


def test_the_failure_alert_is_a_valid_alert_event() -> None:
    contract = Contract(Settings().schemas_dir)
    alert = contract["alert"]
    record = orchestration.alert_from_context(
        failed_context(ValueError("gate failed: gold.cdn_edge_daily")), NOW_MS
    )
    alert.check(record)
    value = compile_codec(alert, 42)(record)
    assert value is not None, "the generated codec takes it as plainly valid"
    assert decode(value, alert.parsed)["entity"] == "reelpulse_refine.gold"
    assert record["rule"] == "airflow_task_failed"
    assert (record["status"], record["severity"], record["entity_type"]) == (
        "FIRING",
        "CRITICAL",
        "airflow_task",
    )
    assert "ValueError: gate failed: gold.cdn_edge_daily" in record["message"]
    assert "try 3" in record["message"]
    assert record["window_start"] == NOW_MS - 90_000
    assert record["window_end"] == record["event_time"] == NOW_MS
    assert alert.key_of(record) == record["alert_id"]


def test_the_alert_id_is_stable_per_dag_task_and_run() -> None:
    first = orchestration.alert_id("reelpulse_refine", "gold", "run-1")
    assert first == orchestration.alert_id("reelpulse_refine", "gold", "run-1")
    assert first.startswith("airflow_task_failed-")
    others = {
        orchestration.alert_id("reelpulse_refine", "silver", "run-1"),
        orchestration.alert_id("reelpulse_refine", "gold", "run-2"),
        orchestration.alert_id("reelpulse_ingest", "gold", "run-1"),
    }
    assert first not in others
    assert len(others) == 3


def test_a_long_error_message_is_cut_to_a_readable_length() -> None:
    record = orchestration.alert_from_context(failed_context(RuntimeError("x" * 10_000)), NOW_MS)
    assert len(record["message"]) == orchestration.MESSAGE_LIMIT


def test_an_alert_that_cannot_be_published_is_logged_and_the_failure_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(record: Any) -> None:
        raise ConnectionError("broker unreachable")

    with caplog.at_level(logging.ERROR, logger="reelpulse.orchestration"):
        record = orchestration.notify_failure(failed_context(ValueError("boom")), publish=broken)
    assert record is not None
    assert "could not publish the failure alert" in caplog.text
    assert record["alert_id"] in caplog.text, "the alert itself is in the log"
    assert "broker unreachable" in caplog.text


def test_a_published_alert_goes_to_the_publisher_once() -> None:
    sent: list[Any] = []
    record = orchestration.notify_failure(failed_context(ValueError("boom")), publish=sent.append)
    assert sent == [record]


def test_a_context_without_a_task_instance_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="reelpulse.orchestration"):
        assert orchestration.notify_failure({}, publish=lambda record: None) is None
    assert "could not publish the failure alert" in caplog.text
