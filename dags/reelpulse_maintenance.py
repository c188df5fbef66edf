"""### reelpulse_maintenance: compact and vacuum the lake, weekly

1. `optimize` compacts the small files of every Delta table (`batch.maintenance.optimize`,
   `OPTIMIZE`: same rows, a new version with `dataChange = false`).
2. `vacuum` deletes the files no version of the last 168 hours needs
   (`batch.maintenance.vacuum` with its default retention, Delta's safety threshold).

Runs Sunday 04:00 UTC, when the daily products are long done. See `dags/README.md`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

from reelpulse import orchestration as orch


@dag(
    dag_id=orch.MAINTENANCE,
    schedule="0 4 * * 0",
    catchup=False,
    max_active_runs=1,
    default_args=orch.default_args(execution_timeout=dt.timedelta(hours=2)),
    tags=["reelpulse", "lake", "maintenance"],
    doc_md=__doc__,
)
def reelpulse_maintenance() -> None:
    @task
    def optimize() -> dict[str, int]:
        """Compact every table of the lake."""
        from batch import maintenance

        with orch.lake_job("reelpulse-optimize") as (settings, spark):
            results = maintenance.optimize(settings, spark)
        before, after = sum(r.files_before for r in results), sum(r.files_after for r in results)
        return {"tables": len(results), "files_before": before, "files_after": after}

    @task
    def vacuum() -> dict[str, int]:
        """Delete the files older versions no longer need (168 hours of retention)."""
        from batch import maintenance

        with orch.lake_job("reelpulse-vacuum") as (settings, spark):
            results = maintenance.vacuum(settings, spark)
        return {"tables": len(results), "files_deleted": sum(r.files_deleted or 0 for r in results)}

    optimize() >> vacuum()


reelpulse_maintenance()
