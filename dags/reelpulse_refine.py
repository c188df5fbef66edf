"""### reelpulse_refine: bronze -> silver -> gold, whenever bronze changes

Scheduled on the `bronze` asset: every successful `reelpulse_ingest` run starts one.

1. `silver` runs `batch.pipeline.silver_step`: the new bronze rows, pseudonymized and
   deduplicated, each table's batch through its Great Expectations gate before it is
   merged (needs `REELPULSE_SILVER_PSEUDONYMIZATION_KEY`). Updates the `silver` asset.
2. `gold` rebuilds every gold table from all of silver (`batch.pipeline.gold_step`, a full
   deterministic recompute), each through its gate. Updates the `gold` asset.

Each task renders the Data Docs (`lake/_quality/docs`) at its end. A failed gate fails the
task: nothing is published, silver's marks stay, the retry or the next run redoes it.
See `dags/README.md`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import AssetAny, dag, task

from reelpulse import orchestration as orch


@dag(
    dag_id=orch.REFINE,
    schedule=AssetAny(orch.asset("bronze")),
    catchup=False,
    max_active_runs=1,
    default_args=orch.default_args(execution_timeout=dt.timedelta(hours=1)),
    tags=["reelpulse", "lake", "silver", "gold"],
    doc_md=__doc__,
)
def reelpulse_refine() -> None:
    @task(outlets=[orch.asset("silver")])
    def silver(outlet_events: Any = None) -> dict[str, Any]:
        """Bring silver up to date with bronze, every table through its quality gate."""
        from batch import pipeline, quality

        with orch.lake_job("reelpulse-refine-silver") as (settings, spark):
            gate = quality.Gate(settings, spark)
            try:
                result = pipeline.silver_step(settings, spark, gate, settings.pseudonymization_key())
            finally:
                gate.build_docs()
        summary = {"merged": {table: int(counts["merged"]) for table, counts in result.items()}}
        outlet_events[orch.asset("silver")].extra = summary
        return summary

    @task(outlets=[orch.asset("gold")])
    def gold(outlet_events: Any = None) -> dict[str, Any]:
        """Rebuild every gold table from silver, each published only when its gate passes."""
        from batch import pipeline, quality

        with orch.lake_job("reelpulse-refine-gold") as (settings, spark):
            gate = quality.Gate(settings, spark)
            try:
                rows = pipeline.gold_step(settings, spark, gate)
            finally:
                gate.build_docs()
        summary = {"rows": {table: int(count) for table, count in rows.items()}}
        outlet_events[orch.asset("gold")].extra = summary
        return summary

    silver() >> gold()


reelpulse_refine()
