"""What the Airflow DAGs in ``dags/`` share: DAG ids, assets, task defaults, the Spark
session a task holds, and the failure callback that raises an alert.

The DAG files stay thin: each task imports its ``batch/`` step inside its body and runs
it in :func:`lake_job`. Importing this module (and so parsing a DAG file) starts no
Spark, reads no settings file and opens no connection: assets take the lake's location
from ``REELPULSE_LAKE_DIR`` in the environment only (``reelpulse airflow`` exports every
setting, ``.env`` included, to Airflow's processes).

**Assets, one per lake table.** Every bronze, silver and gold table, and each product
table other teams read (``gold.recommendations``, ``gold.recommendation_evaluations``,
``gold.experiment_results``), is an asset named ``<layer>.<table>`` whose URI is the
table's location. The tables a DAG names at parse time (the bronze event tables refine is
scheduled on, the gold tables) are listed here, not found by reading the contract or the
lake, so parsing a DAG file reads no file; a unit test holds the lists equal to the
contract (``schemas/``) and ``batch/gold.py``. The silver tables' assets are named by the
events the silver task emits.

The bronze and silver tasks write only the tables that got new rows, so they emit their
asset events through an alias per layer (``reelpulse-bronze``, ``reelpulse-silver``): one
event per table written, with its row counts in the event's ``extra``. An ingest run that
found nothing new emits no event and starts no refine. Gold is a full recompute of every
table, so its task has the gold tables as plain outlets; it is skipped (no events) when
the silver task before it wrote nothing, unless the run was started by hand.

**Failure alerts.** :func:`on_task_failure` runs when a task has failed for good (its
retries spent). It publishes an ``alert`` event (``schemas/alert.avsc``) to
``reelpulse.alerts`` with the same producer the stream monitors use, so ``reelpulse alerts
tail`` and the webhook sink show it. Publishing is best effort by policy: if the broker or
the registry cannot take it, the alert is logged in full and the task stays failed, never
masked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from batch.quality import Gate

log = logging.getLogger("reelpulse.orchestration")

INGEST, REFINE, PRODUCTS, MAINTENANCE = (
    "reelpulse_ingest", "reelpulse_refine", "reelpulse_products", "reelpulse_maintenance",
)  # fmt: skip
DAG_IDS = (INGEST, REFINE, PRODUCTS, MAINTENANCE)
OWNER = "reelpulse-data"

# The tables the DAGs name before they run (see the module docstring; tests/unit/test_dags.py
# keeps them true). The silver tables' assets are the ones the silver task emits.
EVENT_TABLES = (
    "bitrate_switch", "cdn_request", "experiment_exposure", "login", "logout", "playback_error",
    "playback_heartbeat", "playback_pause", "playback_resume", "playback_seek", "playback_start",
    "playback_stop", "rating", "search", "title",
)  # fmt: skip
# What reelpulse_refine is scheduled on: any bronze event table (not the quarantine).
REFINE_ON = tuple(f"bronze.{table}" for table in EVENT_TABLES)
GOLD_TABLES = (
    "title_engagement_daily", "playback_quality_daily", "cdn_edge_daily", "active_users_daily",
    "retention_cohorts", "login_security_daily", "user_title_interactions", "experiment_user_metrics",
)  # fmt: skip
PRODUCT_TABLES = ("recommendations", "recommendation_evaluations", "experiment_results")
MANUAL_RUN = "manual"

ALERT_RULE = "airflow_task_failed"
ALERT_ENTITY_TYPE = "airflow_task"
ALERT_EVENT = "alert"
MESSAGE_LIMIT = 2000
# Alerts are few and must not hold a failed task up for minutes: a broker that does not
# acknowledge within this time gets the alert logged instead.
ALERT_PRODUCER = {"linger.ms": 5, "delivery.timeout.ms": 15_000, "socket.timeout.ms": 10_000}
ALERT_FLUSH_S = 20.0


# --------------------------------------------------------------------------- assets


def lake_root() -> str:
    """The lake's root from the environment only (no settings file read at parse time)."""
    root = Settings(_env_file=None).lake_dir
    return root if "://" in root else f"file://{os.path.abspath(root)}"


def asset_uri(name: str, root: str | None = None) -> str:
    """``bronze`` -> ``<lake>/bronze``; ``gold.recommendations`` -> ``<lake>/gold/recommendations``."""
    return f"{(root or lake_root()).rstrip('/')}/{name.replace('.', '/')}"


def asset(name: str) -> Any:
    """The Airflow asset of a lake table (``gold.recommendations``)."""
    from airflow.sdk import Asset

    return Asset(name=name, uri=asset_uri(name), group="reelpulse-lake")


def assets(layer: str, tables: Iterable[str]) -> list[Any]:
    """The assets of ``tables`` of one layer: ``assets("gold", ["x"])`` -> ``[gold.x]``."""
    return [asset(f"{layer}.{table}") for table in tables]


def alias(layer: str) -> Any:
    """The alias a layer's task emits its tables' asset events through."""
    from airflow.sdk import AssetAlias

    return AssetAlias(name=f"reelpulse-{layer}", group="reelpulse-lake")


def emit(outlet_events: Any, layer: str, written: Mapping[str, Mapping[str, int]]) -> list[str]:
    """One asset event per table written (``{table: extra}``) through the layer's alias;
    returns the asset names."""
    events = outlet_events[alias(layer)]
    for table, extra in sorted(written.items()):
        events.add(asset(f"{layer}.{table}"), extra=dict(extra))
    return [f"{layer}.{table}" for table in sorted(written)]


def gold_needed(silver_tables: Iterable[str], run_type: str) -> bool:
    """Gold is rebuilt when silver wrote something in this run, or when a person asked."""
    return run_type == MANUAL_RUN or any(True for _ in silver_tables)


# --------------------------------------------------------------------------- task defaults


def default_args(execution_timeout: dt.timedelta) -> dict[str, Any]:
    """Arguments of every task: owner, retries with exponential backoff, a timeout, one
    instance of a task at a time across runs (backfills too), and the failure alert."""
    return {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=1),
        # Airflow 3.3 takes a multiplier here; True would mean 1.0, a constant delay.
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(minutes=15),
        "execution_timeout": execution_timeout,
        "max_active_tis_per_dag": 1,
        "on_failure_callback": on_task_failure,
    }


@contextmanager
def lake_job(app_name: str) -> Iterator[tuple[Settings, SparkSession]]:
    """Settings and a Spark session for one task; the session is stopped however it ends."""
    from batch import spark as spark_support

    settings = Settings()
    spark = spark_support.session(settings, app_name)
    try:
        yield settings, spark
    finally:
        spark.stop()


@contextmanager
def gated_job(app_name: str) -> Iterator[tuple[Settings, SparkSession, Gate]]:
    """:func:`lake_job` with a quality gate whose Data Docs are rendered at the end."""
    from batch import quality

    with lake_job(app_name) as (settings, spark), quality.gated(settings, spark) as gate:
        yield settings, spark, gate


# --------------------------------------------------------------------------- failure alerts


def alert_id(dag_id: str, task_id: str, run_id: str) -> str:
    """One id per failed task of a run: a cleared and failed-again task is the same incident."""
    digest = hashlib.sha256(f"{dag_id}\x1f{task_id}\x1f{run_id}".encode()).hexdigest()
    return f"{ALERT_RULE}-{digest[:20]}"


def failure_alert(
    dag_id: str,
    task_id: str,
    run_id: str,
    try_number: int,
    error: BaseException | str | None,
    started_ms: int,
    now_ms: int,
) -> dict[str, Any]:
    """The ``alert`` record of a task that failed for good in a run."""
    reason = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    message = f"{dag_id}.{task_id} failed on try {try_number} of run {run_id}: {reason}"
    return {
        "alert_id": alert_id(dag_id, task_id, run_id),
        "event_time": now_ms,
        "rule": ALERT_RULE,
        "status": "FIRING",
        "severity": "CRITICAL",
        "entity_type": ALERT_ENTITY_TYPE,
        "entity": f"{dag_id}.{task_id}",
        "window_start": min(started_ms, now_ms),
        "window_end": now_ms,
        "observed": float(try_number),
        "threshold": None,
        "baseline": None,
        "first_seen": now_ms,
        "message": message[:MESSAGE_LIMIT],
    }


def alert_from_context(context: Mapping[str, Any], now_ms: int | None = None) -> dict[str, Any]:
    """The alert of the failed task instance in an Airflow callback context."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ti = context["ti"]
    started = getattr(ti, "start_date", None)
    started_ms = int(started.timestamp() * 1000) if isinstance(started, dt.datetime) else now_ms
    error = context.get("exception")
    return failure_alert(ti.dag_id, ti.task_id, ti.run_id, int(ti.try_number or 1), error, started_ms, now_ms)


def publish_alert(record: Mapping[str, Any], settings: Settings | None = None) -> None:
    """Produce one alert to ``reelpulse.alerts`` and wait for Kafka's acknowledgement."""
    from reelpulse.contract import Contract
    from reelpulse.producer import EventProducer

    settings = settings or Settings()
    with EventProducer(settings, Contract(settings.schemas_dir), config=ALERT_PRODUCER) as producer:
        producer.produce(ALERT_EVENT, record)
        producer.flush(ALERT_FLUSH_S)


def notify_failure(
    context: Mapping[str, Any], publish: Callable[[Mapping[str, Any]], None] = publish_alert
) -> dict[str, Any] | None:
    """Build and publish the alert of a failed task. Never raises: the task has failed
    already, and a broken alert path must not hide that (it is logged instead)."""
    record = None
    try:
        record = alert_from_context(context)
        publish(record)
        log.info("alert %s published for %s", record["alert_id"], record["entity"])
    except Exception:  # policy: log the alert in full, let the task's failure stand
        log.exception("could not publish the failure alert %s; the task stays failed", record)
    return record


def on_task_failure(context: Mapping[str, Any]) -> None:
    """Airflow's ``on_failure_callback`` of every reelpulse task."""
    notify_failure(context)
