"""### reelpulse_products: recommendations and A/B reports from gold, daily

1. `recommendations` runs `batch.pipeline.recommendations_step`: tunes and evaluates every
   recommender on gold `user_title_interactions`, publishes the best one's lists to
   `gold.recommendations` and appends the evaluation to `gold.recommendation_evaluations`
   (both through their quality gates), and writes the HTML evaluation report.
2. `experiment_reports` runs `batch.pipeline.experiments_step`: the A/B results of every
   experiment to `gold.experiment_results` and their HTML reports (skipped while gold has
   no experiment metrics yet).

Each task renders the Data Docs at its end and updates its tables' assets.
See `dags/README.md`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import dag, task

from reelpulse import orchestration as orch


@dag(
    dag_id=orch.PRODUCTS,
    schedule="0 2 * * *",
    catchup=False,
    max_active_runs=1,
    default_args=orch.default_args(execution_timeout=dt.timedelta(minutes=90)),
    tags=["reelpulse", "lake", "gold", "products"],
    doc_md=__doc__,
)
def reelpulse_products() -> None:
    @task(outlets=[orch.asset("gold.recommendations"), orch.asset("gold.recommendation_evaluations")])
    def recommendations(outlet_events: Any = None) -> dict[str, Any]:
        """Train, evaluate and publish the recommendations."""
        from batch import pipeline

        with orch.gated_job("reelpulse-products-recommendations") as (settings, spark, gate):
            result = pipeline.recommendations_step(settings, spark, gate)
        summary = {"run_id": result.run_id, "published": result.published, "users": int(result.users)}
        for name in ("gold.recommendations", "gold.recommendation_evaluations"):
            outlet_events[orch.asset(name)].extra = summary
        return summary

    @task(outlets=[orch.asset("gold.experiment_results")])
    def experiment_reports(outlet_events: Any = None) -> dict[str, Any]:
        """Analyse every A/B experiment and publish its results and report."""
        from batch import pipeline

        with orch.gated_job("reelpulse-products-experiments") as (settings, spark, gate):
            reports = pipeline.experiments_step(settings, spark, gate)
        summary = {"experiments": sorted(reports)}
        outlet_events[orch.asset("gold.experiment_results")].extra = summary
        return summary

    recommendations() >> experiment_reports()


reelpulse_products()
