"""### reelpulse_refine: bronze -> silver -> gold, whenever bronze changes

Scheduled on the bronze event tables' assets (`bronze.login`, `bronze.playback_start`,
...): an ingest run that appended to any of them starts one.

1. `silver` runs `batch.pipeline.silver_step`: the new bronze rows, pseudonymized and
   deduplicated, each table's batch through its Great Expectations gate before it is
   merged (needs `REELPULSE_SILVER_PSEUDONYMIZATION_KEY`). Each silver table it wrote
   (event tables, sessions, dimensions, `_late`) gets an asset event through the
   `reelpulse-silver` alias.
2. `gold` rebuilds every gold table from all of silver (`batch.pipeline.gold_step`, a full
   deterministic recompute), each through its gate, and updates every `gold.<table>`
   asset. It is skipped when `silver` wrote nothing (bronze got only rows silver had
   seen), unless the run was triggered by hand.

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
    schedule=AssetAny(*map(orch.asset, orch.REFINE_ON)),
    catchup=False,
    max_active_runs=1,
    default_args=orch.default_args(execution_timeout=dt.timedelta(hours=1)),
    tags=["reelpulse", "lake", "silver", "gold"],
    doc_md=__doc__,
)
def reelpulse_refine() -> None:
    @task(outlets=[orch.alias("silver")])
    def silver(outlet_events: Any = None) -> dict[str, Any]:
        """Bring silver up to date with bronze, every table through its quality gate."""
        from batch import pipeline

        with orch.gated_job("reelpulse-refine-silver") as (settings, spark, gate):
            result = pipeline.silver_step(settings, spark, gate, settings.pseudonymization_key())
        written = {table: dict(result.events.get(table, {})) for table in result.tables}
        return {"merged": result.events, "updated": orch.emit(outlet_events, "silver", written)}

    @task(outlets=orch.assets("gold", orch.GOLD_TABLES))
    def gold(silver_run: dict[str, Any], dag_run: Any = None, outlet_events: Any = None) -> dict[str, Any]:
        """Rebuild every gold table from silver, each published only when its gate passes."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not orch.gold_needed(silver_run["updated"], str(dag_run.run_type)):
            raise AirflowSkipException("silver wrote nothing new in this run: gold is up to date")
        from batch import pipeline

        with orch.gated_job("reelpulse-refine-gold") as (settings, spark, gate):
            rows = pipeline.gold_step(settings, spark, gate)
        for table, count in rows.items():
            outlet_events[orch.asset(f"gold.{table}")].extra = {"rows": int(count)}
        return {"rows": {table: int(count) for table, count in rows.items()}}

    gold(silver())


reelpulse_refine()
