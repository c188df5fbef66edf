"""Write-audit-publish quality gates: a batch is written aside, validated with Great
Expectations, and only then published; a batch that fails stays aside for inspection.

``Gate.audit`` overwrites ``Lake.audit(layer, table)`` with the batch, validates the data
*as written* (read back from Delta) against the table's expectations and records the
outcome in the Delta table ``<lake>/_quality/runs``. On success it returns the audited
rows for the caller to publish (``Gate.publish_overwrite`` does both for tables that are
rebuilt whole; ``Gate.release`` drops the audit copies once the caller has published them);
on failure it raises :class:`QualityGateFailed` and nothing is published.

Expectations are the contract's ``{expectation_type: {kwargs}}`` items (``silver.yml``),
turned into Great Expectations 1.x classes. An expectation on a column the batch lacks
fails as ``expect_column_to_exist`` (a schema check) unless its kwargs say
``optional: true``. Three checks are computed per run and validated as ordinary GX
expectations, so they show in Data Docs like the rest:

- ``reelpulse_volume: {min_ratio, max_ratio, runs}``: the row count against the median of
  the last ``runs`` successful counts of the table in ``_quality/runs`` (none on a first run);
- ``reelpulse_freshness: {column, not_older_than}``: ``max(column) >= not_older_than``, an
  instant the caller takes from its source data, never the wall clock;
- ``reelpulse_references: {column, table: layer/name, key, mostly}``: values of ``column``
  are keys of another Delta table of the lake, as a Spark SQL anti-join over ``{batch}``
  (``UnexpectedRowsExpectation``), so the referenced keys are never collected to the driver.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from batch.lake import Lake
from reelpulse.errors import ReelpulseError
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.data_context import AbstractDataContext as Context
    from great_expectations.expectations import Expectation
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("reelpulse.batch.quality")

VOLUME = "reelpulse_volume"
FRESHNESS = "reelpulse_freshness"
REFERENCES = "reelpulse_references"
DYNAMIC_ARGS = {
    VOLUME: {"min_ratio", "max_ratio", "runs"},
    FRESHNESS: {"column", "not_older_than"},
    REFERENCES: {"column", "table", "key", "mostly"},
}
COLUMN_ARGS = ("column", "column_A", "column_B", "column_list")
SOURCE = "lake"  # the gate's GX Spark data source; one dataframe asset per table
SITE = "lake"  # the Data Docs site
DOCS_VALIDATIONS = 200  # newest validation results the Data Docs index lists and renders
RUNS_FILES = 64  # files of the runs table above which build_docs compacts it
CONTRACTS = Path(__file__).parent  # <layer>.yml: the contracts next to the jobs


class QualityGateFailed(ReelpulseError):
    """A batch failed its quality gate: it stays at ``audit_path``, nothing was published."""

    def __init__(self, layer: str, table: str, failed: list[str], audit_path: str, docs_path: str) -> None:
        self.layer, self.table, self.failed = layer, table, failed
        self.audit_path, self.docs_path = audit_path, docs_path
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [f"{self.layer}/{self.table}: {len(self.failed)} expectation(s) failed, nothing published:"]
        lines += [f"  - {failure}" for failure in self.failed]
        lines.append(
            f"The batch is held at {self.audit_path} (Delta); inspect it with "
            f"reelpulse sql \"SELECT * FROM delta_scan('{self.audit_path}') LIMIT 20\""
        )
        if self.docs_path:
            lines.append(f"Validation details (Data Docs): {self.docs_path}")
        return "\n".join(lines)


def contract_expectations(contract: Mapping[str, Any] | Path, table: str) -> list[dict[str, Any]]:
    """The expectations of ``table`` in a contract like ``batch/silver.yml``: its entry under
    ``tables``, else the shared ``event_tables`` entry (a layer's event tables are not listed
    one by one)."""
    data = _load_yaml(contract) if isinstance(contract, Path) else contract
    tables = data.get("tables") or {}
    entry = tables[table] if table in tables else data.get("event_tables")
    if entry is None:
        raise KeyError(f"no contract for table {table!r}: add it under `tables:` of the layer's yml")
    return [dict(item) for item in entry.get("expectations") or []]


def _load_yaml(path: Path) -> Mapping[str, Any]:
    import yaml

    if not path.exists():
        raise FileNotFoundError(f"no contract {path}: pass the expectations explicitly")
    return dict(yaml.safe_load(path.read_text()))


# --- expectations: contract items -> GX 1.x classes -------------------------------------------


def build_expectations(
    items: Sequence[Mapping[str, Any]],
    dtypes: Mapping[str, str],
    *,
    history: Callable[[int], list[int]],
    lake: Lake,
) -> list[Expectation]:
    """GX expectations for a batch with columns ``dtypes``: schema checks for missing
    columns first, then the items in order. ``history(n)`` gives the row counts of the
    table's last ``n`` successful validations, newest first."""
    built: list[Expectation] = []
    missing: dict[str, list[str]] = {}
    for item in items:
        name, kwargs = _parse(item)
        optional = bool(kwargs.pop("optional", False))
        absent = [column for column in _columns(name, kwargs) if column not in dtypes]
        for column in [] if optional else absent:
            missing.setdefault(column, []).append(name)
        expectation = None if absent else _expectation(name, kwargs, dtypes, history, lake)
        if expectation is not None:
            built.append(expectation)
    return [_column_to_exist(column, needed_by) for column, needed_by in missing.items()] + built


def _parse(item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if len(item) != 1:
        raise ValueError(f"an expectation is one {{expectation_type: {{kwargs}}}} item, got {dict(item)!r}")
    ((name, kwargs),) = item.items()
    return str(name), dict(kwargs or {})


def _columns(name: str, kwargs: Mapping[str, Any]) -> list[str]:
    """Columns an expectation needs. A table-level one (``expect_table_columns_to_match_set``)
    names columns to compare with the batch's, and reports missing ones itself."""
    if name.startswith("expect_table_"):
        return []
    found: list[str] = []
    for key in COLUMN_ARGS:
        value = kwargs.get(key)
        found += [value] if isinstance(value, str) else list(value or [])
    return found


def _expectation(
    name: str,
    kwargs: dict[str, Any],
    dtypes: Mapping[str, str],
    history: Callable[[int], list[int]],
    lake: Lake,
) -> Expectation | None:
    if name in DYNAMIC_ARGS and set(kwargs) - DYNAMIC_ARGS[name]:
        raise ValueError(f"{name} takes {sorted(DYNAMIC_ARGS[name])}, got {sorted(kwargs)}")
    if name == VOLUME:
        return _volume(kwargs, history)
    if name == FRESHNESS:
        return _freshness(kwargs, dtypes)
    if name == REFERENCES:
        return _references(kwargs, lake)
    return _static(name, kwargs)


def _static(name: str, kwargs: dict[str, Any]) -> Expectation:
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        return get_expectation_impl(name)(**kwargs)
    except ExpectationNotFoundError as error:
        raise ValueError(f"unknown expectation type {name!r}") from error
    except (TypeError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"bad arguments for {name}: {kwargs!r}: {error}") from error


def _column_to_exist(column: str, needed_by: list[str]) -> Expectation:
    import great_expectations.expectations as gxe

    detail = f"needed by {', '.join(needed_by)}"
    return gxe.ExpectColumnToExist(column=column, notes=detail, meta={"detail": detail})


def _volume(kwargs: Mapping[str, Any], history: Callable[[int], list[int]]) -> Expectation | None:
    import great_expectations.expectations as gxe

    counts = history(int(kwargs.get("runs", 5)))
    if not counts:
        return None  # a first run has nothing to compare with
    median = statistics.median(counts)
    low, high = float(kwargs.get("min_ratio", 0.5)), kwargs.get("max_ratio")
    detail = (
        f"{VOLUME}: {low:g}x to {'any' if high is None else f'{float(high):g}x'} the median "
        f"{median:g} of the last {len(counts)} successful runs"
    )
    return gxe.ExpectTableRowCountToBeBetween(
        min_value=math.ceil(low * median),
        max_value=None if high is None else math.floor(float(high) * median),
        notes=detail,
        meta={"detail": detail},
    )


def _freshness(kwargs: Mapping[str, Any], dtypes: Mapping[str, str]) -> Expectation:
    import great_expectations.expectations as gxe

    column, instant = kwargs["column"], _instant(kwargs["not_older_than"])
    detail = f"{FRESHNESS}: newest {column} at or after {instant.isoformat()}"
    return gxe.ExpectColumnMaxToBeBetween(
        column=column, min_value=_as_collected(instant, dtypes[column]), notes=detail, meta={"detail": detail}
    )


def _instant(value: str | dt.datetime) -> dt.datetime:
    instant = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return instant if instant.tzinfo else instant.replace(tzinfo=dt.UTC)


def _as_collected(instant: dt.datetime, dtype: str) -> dt.datetime | dt.date:
    """``instant`` as PySpark returns a value of ``dtype``: GX compares the collected max
    with it, and PySpark gives ``timestamp`` values as naive local time."""
    if dtype == "date":
        return instant.astimezone(dt.UTC).date()
    if dtype == "timestamp_ntz":
        return instant.astimezone(dt.UTC).replace(tzinfo=None)
    if dtype == "timestamp":
        return instant.astimezone().replace(tzinfo=None)
    raise ValueError(f"{FRESHNESS} needs a timestamp or date column, not {dtype}")


def _references(kwargs: Mapping[str, Any], lake: Lake) -> Expectation:
    import great_expectations.expectations as gxe

    column, target = str(kwargs["column"]), str(kwargs["table"])
    key, mostly = str(kwargs.get("key", column)), float(kwargs.get("mostly", 1.0))
    layer, _, name = target.partition("/")
    detail = f"{REFERENCES}: {column} in {target}.{key}" + ("" if mostly >= 1 else f" (mostly {mostly:g})")
    return gxe.UnexpectedRowsExpectation(
        unexpected_rows_query=_orphans_query(column, lake.table(layer, name), key, mostly),
        description=f"Values of {column} are keys {key} of {target}"
        + ("" if mostly >= 1 else f" (at least {mostly:.0%} of them)"),
        notes=detail,
        meta={"detail": detail},
    )


def _orphans_query(column: str, path: str, key: str, mostly: float) -> str:
    """Spark SQL returning the batch's values of ``column`` missing from the Delta table at
    ``path``; with ``mostly`` below 1, only when more than ``1 - mostly`` of the non-null
    values are missing. ``{batch}`` is the batch being validated, filled in by GX."""
    col, ref = _ident(column), _ident(key)
    table = "delta.`" + path.replace("`", "``").replace("{", "{{").replace("}", "}}") + "`"
    orphans = (
        f"SELECT b.{col} FROM {{batch}} b LEFT ANTI JOIN {table} r ON b.{col} = r.{ref} "
        f"WHERE b.{col} IS NOT NULL"
    )
    if mostly >= 1:
        return orphans
    return (
        f"WITH orphans AS ({orphans}) SELECT * FROM orphans WHERE (SELECT count(*) FROM orphans) > "
        f"{round(1 - mostly, 9)} * (SELECT count({col}) FROM {{batch}})"
    )


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``").replace("{", "{{").replace("}", "}}") + "`"


# --- results -> messages ------------------------------------------------------------------------


def describe(result: ExpectationValidationResult) -> str:
    """One failed expectation for a person: type, arguments, what was observed."""
    config = result.expectation_config
    assert config is not None  # every result of a suite validation carries its expectation
    label = f"{config.type}({_arguments(config.kwargs)})"
    detail = (config.meta or {}).get("detail")
    observed = "column missing" if config.type == "expect_column_to_exist" else _observed(result, config)
    return f"{label} [{detail}]: {observed}" if detail else f"{label}: {observed}"


def _arguments(kwargs: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k not in ("batch_id", "unexpected_rows_query")}
    return ", ".join(f"{key}={_short(value)}" for key, value in shown.items())


def _short(value: Any, limit: int = 60) -> str:
    text = value.isoformat() if isinstance(value, dt.date) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _observed(result: ExpectationValidationResult, config: ExpectationConfiguration) -> str:
    error = _exception(result.exception_info or {})
    if error:
        return f"could not be evaluated: {error}"
    found = dict(result.result or {})
    if "unexpected_count" in found:
        sample = found.get("partial_unexpected_list") or []
        return f"{found['unexpected_count']} unexpected ({found.get('unexpected_percent') or 0:.3g}%)" + (
            f", e.g. {_short(sample[:5], 120)}" if sample else ""
        )
    if "observed_value" in found and config.type == "unexpected_rows_expectation":
        return f"{found['observed_value']} unexpected rows"
    if "observed_value" in found:
        return f"observed {_short(found['observed_value'], 200)}"
    return "failed"


def _exception(info: Mapping[str, Any]) -> str:
    """The first line of an exception GX caught while computing the expectation's metrics
    (``exception_info`` is flat, or keyed by metric)."""
    infos = [info] if "exception_message" in info else [v for v in info.values() if isinstance(v, dict)]
    for each in infos:
        if each.get("raised_exception") and each.get("exception_message"):
            return str(each["exception_message"]).strip().splitlines()[0][:300]
    return ""


@dataclass(frozen=True)
class Outcome:
    """One validation of one batch."""

    success: bool
    row_count: int
    failed: list[str]
    validated_at: dt.datetime


# --- the gate -----------------------------------------------------------------------------------


class Gate:
    """Write-audit-publish for one job run: every table a job writes passes through
    ``audit`` (or ``publish_overwrite``); the job calls ``build_docs`` once at the end.

    One ephemeral GX context per gate, with one Spark data source and one dataframe asset
    per table, reused by every validation. Ephemeral rather than a file context: a file
    context keeps its data sources and assets in ``great_expectations.yml`` and rewrites it
    on each change, which concurrent jobs of the lake would race on; here the context's
    configuration is code, while its stores - expectation suites, validation results - are
    files under ``<lake>/_quality/gx``, so Data Docs at ``<lake>/_quality/docs`` show every
    job's validations. GX's stores and sites are local-filesystem ones: for an ``s3a://``
    lake the suites and results stay in memory and no Data Docs are built (the runs table,
    a Delta table, is still written).
    """

    def __init__(self, settings: Settings, spark: SparkSession, *, run_id: str | None = None) -> None:
        self.spark = spark
        self.lake = Lake(settings.lake_dir)
        self.run_id = run_id or f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        self.runs_path = f"{self.lake.quality}/runs"
        self._context: Context | None = None
        self._batches: dict[tuple[int, str], BatchDefinition] = {}
        self._new_docs: list[Any] = []  # suites and results of this gate that Data Docs lack
        self._passed: dict[str, set[str]] = {}  # audit copies of passed batches, by layer

    @property
    def context(self) -> Context:
        """The gate's GX context, built on first use (importing GX takes seconds)."""
        if self._context is None:
            self._context = _new_context(_local_dir(self.lake.quality))
        return self._context

    def audit(
        self,
        layer: str,
        table: str,
        frame: DataFrame,
        expectations: list[dict[str, Any]],
        *,
        context: Context | None = None,
    ) -> DataFrame:
        """Write ``frame`` to ``Lake.audit(layer, table)`` (overwrite), validate the written
        rows and record the outcome. Returns the audited rows (read from the audit path) to
        publish; raises :class:`QualityGateFailed` when an expectation fails, leaving the batch
        at the audit path. ``context``: validate in this GX context (its stores and Data Docs
        sites) instead of the gate's own."""
        started = time.monotonic()
        path = self.lake.audit(layer, table)
        frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
        audited = self.spark.read.format("delta").load(path)
        outcome = self._validate(layer, table, audited, expectations, context or self.context)
        self._record(layer, table, outcome)
        log.info(
            "quality: %s/%s %s, %d rows, %d failed, in %.1fs",
            layer, table, "passed" if outcome.success else "FAILED", outcome.row_count,
            len(outcome.failed), time.monotonic() - started,
        )  # fmt: skip
        if not outcome.success:
            docs = self.build_docs() if context is None else _first_site(context.build_data_docs())
            raise QualityGateFailed(layer, table, outcome.failed, path, docs)
        self._passed.setdefault(layer, set()).add(table)
        return audited

    def publish_overwrite(
        self,
        layer: str,
        table: str,
        frame: DataFrame,
        partition_by: Sequence[str] = (),
        *,
        expectations: list[dict[str, Any]] | None = None,
        context: Context | None = None,
    ) -> None:
        """Audit ``frame``, then overwrite ``Lake.table(layer, table)`` with the audited rows
        and drop the audit copy. ``expectations`` default to the table's entry in the
        layer's contract, ``batch/<layer>.yml``."""
        if expectations is None:
            expectations = contract_expectations(CONTRACTS / f"{layer}.yml", table)
        audited = self.audit(layer, table, frame, expectations, context=context)
        writer = audited.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.partitionBy(*partition_by).save(self.lake.table(layer, table))
        self._passed[layer].discard(table)
        _delete(self.spark, self.lake.audit(layer, table))

    def release(self, layer: str) -> None:
        """Drop the audit copies of the batches this gate passed in ``layer``, once the caller
        has published them (by MERGE, say); batches that failed stay where they are."""
        for table in sorted(self._passed.pop(layer, set())):
            _delete(self.spark, self.lake.audit(layer, table))

    def build_docs(self) -> str:
        """Render the pages of this gate's suites and validations into the Data Docs site and
        rebuild its index (the newest ``DOCS_VALIDATIONS`` validations of every job); returns
        the path of ``index.html`` ("" for a non-local lake). Also compacts the runs table,
        whose appends leave a small file per validation."""
        self._compact_runs()
        docs = _local_dir(self.lake.quality)
        if docs is None:
            log.info("quality: no Data Docs for a lake at %s (local paths only)", self.lake.root)
            return ""
        started = time.monotonic()
        self.context.build_data_docs(site_names=[SITE], resource_identifiers=self._new_docs or None)
        log.info("quality: Data Docs built in %.1fs", time.monotonic() - started)
        self._new_docs = []
        return str(docs / "docs" / "index.html")

    def history(self, layer: str, table: str, runs: int) -> list[int]:
        """Row counts of the last ``runs`` successful validations of a table, newest first."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            recorded = DeltaTable(_delta_rs_uri(self.runs_path))
        except TableNotFoundError:
            return []
        where = [("layer", "=", layer), ("table", "=", table), ("success", "=", True)]
        found = recorded.to_pyarrow_table(columns=["row_count", "validated_at"], filters=where).to_pylist()
        newest = sorted(found, key=lambda row: row["validated_at"], reverse=True)[:runs]
        return [int(row["row_count"]) for row in newest]

    def _compact_runs(self) -> None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            recorded = DeltaTable(_delta_rs_uri(self.runs_path))
        except TableNotFoundError:
            return
        if len(recorded.file_uris()) > RUNS_FILES:
            recorded.optimize.compact()

    def _validate(
        self, layer: str, table: str, audited: DataFrame, items: list[dict[str, Any]], context: Context
    ) -> Outcome:
        audited.persist()  # every metric reads the batch; read the files once
        try:
            rows = audited.count()
            expectations = build_expectations(
                items,
                dict(audited.dtypes),
                history=lambda runs: self.history(layer, table, runs),
                lake=self.lake,
            )
            result = self._run(context, f"{layer}.{table}".replace("/", "."), audited, expectations)
        finally:
            audited.unpersist()
        failed = [describe(r) for r in result.results if not r.success]
        return Outcome(bool(result.success), rows, failed, dt.datetime.now(dt.UTC))

    def _run(
        self, context: Context, name: str, frame: DataFrame, expectations: list[Expectation]
    ) -> ExpectationSuiteValidationResult:
        import great_expectations as gx
        from great_expectations.core.run_identifier import RunIdentifier

        suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=self._batch_definition(context, name), suite=suite)
        )
        run_id = RunIdentifier(run_name=self.run_id, run_time=dt.datetime.now(dt.UTC))
        batch = {"dataframe": frame}
        result = definition.run(batch_parameters=batch, result_format="BOOLEAN_ONLY", run_id=run_id)
        if not result.success:  # observed values and samples, for the message and Data Docs;
            # the same run id stores it under the same key, replacing the first result
            result = definition.run(batch_parameters=batch, result_format="SUMMARY", run_id=run_id)
        suite_key, result_key = _docs_keys(name, run_id, result)
        if result.success and _observed_columns(result):  # stored again, under the same key
            context.validation_results_store.set(result_key, result)
        if context is self._context:
            self._new_docs += [suite_key, result_key]
        return result

    def _batch_definition(self, context: Context, name: str) -> BatchDefinition:
        """The whole-dataframe batch of the table's asset, created once per context."""
        key = (id(context), name)
        if key not in self._batches:
            try:
                source = context.data_sources.get(SOURCE)
            except KeyError:
                source = context.data_sources.add_spark(SOURCE, persist=False)  # the gate caches
            try:
                asset = source.get_asset(name)
            except LookupError:
                asset = source.add_dataframe_asset(name)  # type: ignore[attr-defined]
            self._batches[key] = asset.add_batch_definition_whole_dataframe("batch")
        return self._batches[key]

    def _record(self, layer: str, table: str, outcome: Outcome) -> None:
        """Append the outcome to the runs table with delta-rs: a small commit in milliseconds,
        where a Spark write takes a job (the table is a Delta table like any other)."""
        from deltalake import write_deltalake

        row = {
            "run_id": self.run_id, "layer": layer, "table": table, "success": outcome.success,
            "row_count": outcome.row_count, "failed": json.dumps(outcome.failed),
            "validated_at": outcome.validated_at,
        }  # fmt: skip
        write_deltalake(_delta_rs_uri(self.runs_path), _runs_rows([row]), mode="append")


def _observed_columns(result: ExpectationSuiteValidationResult) -> bool:
    """Give a passing schema check (``expect_table_columns_to_match_ordered_list``) the
    columns it observed, which a BOOLEAN_ONLY result leaves out: Data Docs lay a validation
    page out by them and fail to render the page without. Having passed, it observed
    exactly the listed columns. True when a result was filled in."""
    filled = False
    for each in result.results:
        config = each.expectation_config
        if config is None or config.type != "expect_table_columns_to_match_ordered_list" or not each.success:
            continue
        if "observed_value" not in each.result:
            each.result["observed_value"] = list(config.kwargs["column_list"])
            filled = True
    return filled


def _docs_keys(suite: str, run_id: Any, result: ExpectationSuiteValidationResult) -> list[Any]:
    """Store keys of a validation and its suite, as ``ValidationDefinition.run`` makes them."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    suite_key = ExpectationSuiteIdentifier(name=suite)
    return [suite_key, ValidationResultIdentifier(suite_key, run_id, result.batch_id)]


def _runs_rows(rows: list[dict[str, Any]]) -> Any:
    """Rows of ``_quality/runs`` as Arrow: Spark reads ``validated_at`` as a timestamp."""
    import pyarrow as pa

    schema = pa.schema([
        ("run_id", pa.string()), ("layer", pa.string()), ("table", pa.string()),
        ("success", pa.bool_()), ("row_count", pa.int64()), ("failed", pa.string()),
        ("validated_at", pa.timestamp("us", tz="UTC")),
    ])  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


def _delta_rs_uri(uri: str) -> str:
    """delta-rs names Hadoop's ``s3a://`` scheme ``s3://`` (credentials from ``AWS_*``)."""
    return "s3://" + uri.removeprefix("s3a://") if uri.startswith("s3a://") else uri


def _new_context(quality: Path | None) -> Context:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        FilesystemStoreBackendDefaults,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites: dict[str, Any] = {}
    if quality is None:  # an s3a:// lake: GX's stores and sites are local-filesystem only
        defaults: Any = InMemoryStoreBackendDefaults()
    else:
        defaults = FilesystemStoreBackendDefaults(root_directory=str(quality / "gx"))
        sites[SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(quality / "docs"),
            },
            "site_index_builder": {
                "class_name": "DefaultSiteIndexBuilder",
                "validation_results_limit": DOCS_VALIDATIONS,
            },
        }
    config = DataContextConfig(
        store_backend_defaults=defaults,
        data_docs_sites=sites,
        analytics_enabled=False,  # no network calls from jobs
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _local_dir(uri: str) -> Path | None:
    """The local directory of a lake path (plain or ``file:``), None for object stores."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    return None


def _first_site(urls: Mapping[str, str]) -> str:
    return next(iter(urls.values()), "")


def _delete(spark: SparkSession, path: str) -> None:
    """Remove a directory tree through Hadoop's FileSystem (local paths and s3a alike)."""
    jvm: Any = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(hadoop_path, True)


@contextmanager
def gated(settings: Settings, spark: SparkSession) -> Iterator[Gate]:
    """A gate for the steps in the block, whose Data Docs are rendered when the block ends,
    however it ends: a failed gate's validation is in them."""
    gate = Gate(settings, spark)
    try:
        yield gate
    finally:
        gate.build_docs()
