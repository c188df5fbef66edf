"""### reelpulse_ingest: Kafka -> bronze, every 5 minutes

One task, `bronze`, runs `batch.pipeline.bronze_step`: every event topic's new records
land in its bronze Delta table (or in `bronze/_quarantine` when they cannot be decoded),
exactly once, then the Spark job stops. A run with nothing new in Kafka writes nothing.

Each bronze table the run appended to gets an asset event (`bronze.<table>`, with the
rows in its extra) through the `reelpulse-bronze` alias, and an event table's event starts
`reelpulse_refine`. A run that found nothing new emits none, so refine does not run. A
task that fails for good publishes an `airflow_task_failed` alert to `reelpulse.alerts`.
See `dags/README.md`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import dag, task

from reelpulse import orchestration as orch


@dag(
    dag_id=orch.INGEST,
    schedule="*/5 * * * *",
    catchup=False,
    max_active_runs=1,
    default_args=orch.default_args(execution_timeout=dt.timedelta(minutes=30)),
    tags=["reelpulse", "lake", "bronze"],
    doc_md=__doc__,
)
def reelpulse_ingest() -> None:
    @task(outlets=[orch.alias("bronze")])
    def bronze(outlet_events: Any = None) -> dict[str, Any]:
        """Ingest what is new in every event topic into bronze (Spark, availableNow)."""
        from batch import pipeline

        with orch.lake_job("reelpulse-ingest") as (settings, spark):
            result = pipeline.bronze_step(settings, spark)
        written = {table: {"rows": rows} for table, rows in result["rows"].items()}
        return {"topics": list(result["topics"]), "updated": orch.emit(outlet_events, "bronze", written)}

    bronze()


reelpulse_ingest()
