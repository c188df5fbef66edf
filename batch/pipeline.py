"""The lake build: bronze, then silver, then gold, every silver and gold table through its
quality gate (write-audit-publish), then the Data Docs.

``build`` is what ``reelpulse lake build`` runs; each step is also a function of its own
(``bronze_step``, ``silver_step``, ``gold_step``) for schedulers that run them as tasks.
``products`` (``reelpulse lake products``) then publishes what gold feeds:
recommendations (``recommendations_step``) and A/B reports (``experiments_step``).
A step whose gate fails raises :class:`batch.quality.QualityGateFailed` after rebuilding
the Data Docs: the batch stays under ``_audit``, the published tables are unchanged, and
for silver the high-water marks stay where they were, so the next run retries it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batch import bronze, gold, quality, silver
from batch.lake import Audit, Lake
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("reelpulse.batch.pipeline")

LAYERS = ("bronze", "silver", "gold")
# Checks every gold table gets besides its contract's (see gold.yml, policies.quality_gates).
GOLD_VOLUME = {quality.VOLUME: {"min_ratio": 0.5, "runs": 5}}
FRESHNESS_SLACK = dt.timedelta(days=1)
DATE_COLUMNS = ("event_date", "started_date")


@dataclass
class BuildReport:
    """What one build did: per layer its result and seconds, and where the Data Docs are."""

    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    docs: str = ""


def build(settings: Settings, spark: SparkSession, up_to: str = "gold") -> BuildReport:
    """Run the layers in order up to ``up_to`` (bronze, silver or gold)."""
    if up_to not in LAYERS:
        raise ValueError(f"unknown layer {up_to!r}: choose one of {', '.join(LAYERS)}")
    key = settings.pseudonymization_key() if up_to != "bronze" else b""  # fail before any work
    report = BuildReport()
    _timed(report, "bronze", lambda: bronze_step(settings, spark))
    if up_to == "bronze":
        return report
    gate = quality.Gate(settings, spark)
    try:
        _timed(report, "silver", lambda: silver_step(settings, spark, gate, key))
        if up_to == "gold":
            _timed(report, "gold", lambda: gold_step(settings, spark, gate))
    finally:
        report.docs = gate.build_docs()
    return report


def _timed(report: BuildReport, layer: str, step: Callable[[], Any]) -> None:
    started = time.monotonic()
    report.results[layer] = step()
    report.seconds[layer] = time.monotonic() - started
    log.info("lake build: %s in %.1fs", layer, report.seconds[layer])


def bronze_step(settings: Settings, spark: SparkSession) -> dict[str, Any]:
    return bronze.run(settings, spark)


def silver_step(settings: Settings, spark: SparkSession, gate: quality.Gate, key: bytes) -> silver.SilverRun:
    """Silver with every table's new rows audited before they are merged."""
    result = silver.run(
        settings, spark, pseudonymization_key=key, policy=silver.Policy.from_settings(settings),
        audit=silver_audit(gate),
    )  # fmt: skip
    gate.release("silver")
    return result


def silver_audit(gate: quality.Gate) -> Audit:
    contract = silver.load_contract()

    def audit(table: str, frame: Any) -> Any:
        return gate.audit("silver", table, frame, quality.contract_expectations(contract, table))

    return audit


def gold_step(settings: Settings, spark: SparkSession, gate: quality.Gate) -> dict[str, int]:
    """Gold rebuilt from silver, each table published only when its gate passes."""
    return gold.run(settings, spark, publish=gold_publish(gate, spark, Lake(settings.lake_dir)))


def experiments_step(settings: Settings, spark: SparkSession, gate: quality.Gate) -> dict[str, Any]:
    """A/B experiment results (``batch/experiments.py``) from gold experiment_user_metrics,
    published through the gate with gold's volume check, and their HTML reports; skipped
    while gold has no experiment_user_metrics yet."""
    from batch import experiments

    if not experiments.source_exists(spark, Lake(settings.lake_dir)):
        log.info("experiments: skipped, gold/%s does not exist yet", experiments.SOURCE)
        return {}
    return experiments.run(settings, spark, publish=experiments.gated(gate, GOLD_VOLUME))


def recommendations_step(settings: Settings, spark: SparkSession, gate: quality.Gate) -> Any:
    """Recommendations tuned, evaluated and published (``batch/recommendations.py``)."""
    from batch import recommendations

    return recommendations.run(settings, spark, gate=gate)


@dataclass
class ProductsReport:
    """What ``products`` published: the recommendation run and the experiment results."""

    recommendations: Any
    experiments: dict[str, Any]
    docs: str = ""


def products(settings: Settings, spark: SparkSession) -> ProductsReport:
    """What the lake feeds, once gold is built: recommendations, then the A/B reports,
    each through its gates; then the Data Docs."""
    gate = quality.Gate(settings, spark)
    try:
        recommended = recommendations_step(settings, spark, gate)
        reports = experiments_step(settings, spark, gate)
    finally:
        docs = gate.build_docs()
    return ProductsReport(recommended, reports, docs)


def gold_gated(settings: Settings, spark: SparkSession) -> dict[str, int]:
    """Gold rebuilt through its gates by a gate of its own (e.g. after an erasure)."""
    with quality.gated(settings, spark) as gate:
        return gold_step(settings, spark, gate)


def gold_publish(gate: quality.Gate, spark: SparkSession, lake: Lake) -> gold.Publish:
    contract = gold.load_contract()
    newest: dict[str, dt.date | None] = {}  # per silver input, read once per run

    def publish(name: str, frame: Any) -> None:
        table = gold.TABLES[name]
        expectations = [*quality.contract_expectations(contract, name), GOLD_VOLUME]
        for source in table.inputs:
            if source not in newest:
                newest[source] = newest_date(spark, lake.silver(source))
        dates = [d for source in table.inputs if (d := newest[source]) is not None]
        if "event_date" in frame.columns and dates:
            since = (max(dates) - FRESHNESS_SLACK).isoformat()
            expectations.append({quality.FRESHNESS: {"column": "event_date", "not_older_than": since}})
        gate.publish_overwrite("gold", name, frame, table.partitioning, expectations=expectations)

    return publish


def newest_date(spark: SparkSession, path: str) -> dt.date | None:
    """The newest date of a silver table (its date partition column), None when it has none."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    if not DeltaTable.isDeltaTable(spark, path):
        return None
    frame = spark.read.format("delta").load(path)
    columns = [c for c in DATE_COLUMNS if c in frame.columns]
    if not columns:
        return None
    value = frame.agg(F.max(columns[0])).collect()[0][0]
    return value if isinstance(value, dt.date) else None
