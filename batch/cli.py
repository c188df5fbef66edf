"""``reelpulse lake ...``, ``reelpulse sql``, ``reelpulse forget`` and ``reelpulse experiments
...``: build the lake, keep it compact, ask it questions, erase an account from it, and
report A/B experiments."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from batch import maintenance, recommendations
from batch import sql as lake_sql
from batch.lake import LAYERS
from reelpulse.clitools import run
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from batch import experiments as experiments_module
    from batch.erasure import Receipt

lake_app = typer.Typer(
    help="The Delta Lake: build bronze, silver and gold from Kafka; compact and vacuum its tables.",
    no_args_is_help=True,
)
console = Console()


@lake_app.command("build")
@run
def build(
    layer: Annotated[str, typer.Option(help="Build up to this layer: bronze, silver or gold")] = "gold",
) -> None:
    """Ingest what is new in Kafka into bronze, bring silver up to date and rebuild gold,
    every silver and gold table through its quality gate (exactly once; a second run with
    nothing new changes nothing). A failed gate stops the build and names the expectations."""
    from batch import pipeline
    from batch import spark as spark_support

    if layer not in pipeline.LAYERS:
        raise typer.BadParameter(f"choose one of {', '.join(pipeline.LAYERS)}", param_hint="--layer")
    settings = Settings()
    if layer != "bronze":
        _key(settings)
    spark = spark_support.session(settings, "reelpulse-lake")
    try:
        report = pipeline.build(settings, spark, layer)
    finally:
        spark.stop()
    for name, seconds in report.seconds.items():
        console.print(f"{name}: done in {seconds:.1f}s")
    if "gold" in report.results:
        _print_counts("gold tables (rows)", report.results["gold"])
    if report.docs:
        console.print(f"quality gates passed; Data Docs: {report.docs}")
    console.print(f"lake at {settings.lake_dir}; try: reelpulse sql --tables")


def _print_counts(title: str, counts: dict[str, int]) -> None:
    table = Table("table", "rows", title=title)
    for name, rows in counts.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)


def _key(settings: Settings) -> bytes:
    try:
        return settings.pseudonymization_key()
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error


def sql_command(
    query: Annotated[str | None, typer.Argument(help="SQL over views like silver.playback_sessions")] = None,
    tables: Annotated[bool, typer.Option("--tables", help="List every table and its columns")] = False,
    version: Annotated[
        list[str] | None, typer.Option(help="Time travel: TABLE=VERSION, e.g. silver.login=3")
    ] = None,
    as_of: Annotated[str | None, typer.Option(help="Time travel: every table as of this ISO time")] = None,
    question: Annotated[
        str | None, typer.Option(help=f"A named question: {', '.join(lake_sql.QUESTIONS)}")
    ] = None,
) -> None:
    """Run read-only DuckDB SQL over the lake (bronze.*, silver.*, gold.* views)."""
    lake_dir = Settings().lake_dir
    if tables:
        _print_tables(lake_sql.describe(lake_dir))
        return
    if question is not None:
        if question not in lake_sql.QUESTIONS:
            raise typer.BadParameter(
                f"choose one of {', '.join(lake_sql.QUESTIONS)}", param_hint="--question"
            )
        query = lake_sql.QUESTIONS[question]
    if not query:
        raise typer.BadParameter("give a query, --question NAME or --tables")
    travel = lake_sql.TimeTravel(_versions(version or []), _instant(as_of))
    columns, rows = lake_sql.query(lake_dir, query, travel)
    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)
    console.print(f"{len(rows)} rows")


def _versions(items: list[str]) -> dict[str, int]:
    try:
        return {name: int(number) for name, number in (item.split("=", 1) for item in items)}
    except ValueError as error:
        raise typer.BadParameter("use TABLE=VERSION, e.g. silver.login=3", param_hint="--version") from error


def _instant(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    instant = dt.datetime.fromisoformat(text)
    return instant if instant.tzinfo else instant.replace(tzinfo=dt.UTC)


def _print_tables(described: dict[str, list[tuple[str, str]]]) -> None:
    if not described:
        console.print("no lake tables yet: run `reelpulse lake build` after some traffic")
    for name, columns in described.items():
        table = Table("column", "type", title=name)
        for column, kind in columns:
            table.add_row(column, kind)
        console.print(table)


# --------------------------------------------------------------------------- maintenance

LayerOption = Annotated[
    list[str] | None, typer.Option("--layer", help=f"Only this layer ({', '.join(LAYERS)}); repeatable")
]
TableOption = Annotated[
    list[str] | None, typer.Option("--table", help="Only this table, e.g. silver.login; repeatable")
]


@lake_app.command("optimize")
@run
def optimize_command(
    layer: LayerOption = None,
    table: TableOption = None,
    zorder: Annotated[
        list[str] | None,
        typer.Option(help="Z-order a table by a column: TABLE=COLUMN, e.g. silver.login=user_id"),
    ] = None,
) -> None:
    """Compact small files into large ones (OPTIMIZE); same rows, fewer files."""
    from batch import spark as spark_support

    settings = Settings()
    zorder_by = _pairs(zorder or [], "--zorder", "TABLE=COLUMN, e.g. silver.login=user_id")
    spark = spark_support.session(settings, "reelpulse-optimize")
    try:
        results = maintenance.optimize(settings, spark, layer or LAYERS, table, zorder_by)
    finally:
        spark.stop()
    _print_results("optimize", results)


@lake_app.command("vacuum")
@run
def vacuum_command(
    retain_hours: Annotated[
        float, typer.Option(help="Keep the files versions of the last N hours need")
    ] = maintenance.SAFETY_THRESHOLD_HOURS,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Allow a retention below the safety threshold (only while nothing reads or writes)",
        ),
    ] = False,
    layer: LayerOption = None,
    table: TableOption = None,
) -> None:
    """Delete files no table version within the retention needs (VACUUM); older versions
    can no longer be read (time travel)."""
    from batch import spark as spark_support

    settings = Settings()
    spark = spark_support.session(settings, "reelpulse-vacuum")
    try:
        results = maintenance.vacuum(settings, spark, retain_hours, layer or LAYERS, table, force=force)
    finally:
        spark.stop()
    _print_results(f"vacuum, {retain_hours:g} hours retained", results)


def _pairs(items: list[str], option: str, example: str) -> dict[str, str]:
    pairs = dict(item.split("=", 1) for item in items if "=" in item)
    if len(pairs) != len(items):
        raise typer.BadParameter(f"use {example}", param_hint=option)
    return pairs


def _print_results(title: str, results: list[maintenance.TableResult]) -> None:
    table = Table(
        Column("table", overflow="fold"), "files before", "files after", "deleted from storage", "version",
        title=title,
    )  # fmt: skip
    for r in results:
        deleted = "-" if r.files_deleted is None else f"{r.files_deleted:,}"
        table.add_row(r.table, f"{r.files_before:,}", f"{r.files_after:,}", deleted, str(r.version))
    console.print(table)
    console.print(f"{len(results)} tables" if results else "no lake tables selected")


# --------------------------------------------------------------------------- erasure


@run
def forget_command(
    user_id: Annotated[str, typer.Argument(help="The account id as clients send it (not the pseudonym)")],
) -> None:
    """Erase an account from every lake table (bronze, silver, gold rebuilt), vacuum so no
    older version can return it, and write an erasure receipt."""
    from batch import erasure
    from batch import spark as spark_support

    settings = Settings()
    key = _key(settings)
    spark = spark_support.session(settings, "reelpulse-forget")
    try:
        receipt = erasure.forget(settings, spark, user_id, pseudonymization_key=key)
    finally:
        spark.stop()
    _print_receipt(receipt)


def _print_receipt(receipt: Receipt) -> None:
    from batch.erasure import NOT_COVERED

    table = Table(
        Column("table", overflow="fold"), Column("matched by", overflow="fold"), "rows deleted",
        "version after delete", "after vacuum", title=f"erasure of {receipt.subject[:12]}",
    )  # fmt: skip
    for t in receipt.tables:
        table.add_row(
            t.table,
            t.matched_by,
            f"{t.rows_deleted:,}",
            str(t.version_after_delete),
            str(t.version_after_vacuum),
        )
    console.print(table)
    console.print(f"{receipt.rows_deleted:,} rows deleted from {len(receipt.tables)} tables")
    console.print(f"what the lake cannot erase ({len(NOT_COVERED)} items) is listed in the receipt")
    console.print(f"receipt: {receipt.path}")


@lake_app.command("products")
@run
def products_command() -> None:
    """Train, evaluate and publish recommendations (gold.recommendations and
    gold.recommendation_evaluations, an HTML evaluation report), once gold is built."""
    from batch import pipeline
    from batch import spark as spark_support

    settings = Settings()
    spark = spark_support.session(settings, "reelpulse-products")
    try:
        result = pipeline.products(settings, spark)
    finally:
        spark.stop()
    _print_evaluation(result.recommendations)
    console.print(f"recommendation report: {result.recommendations.report}")


def _print_evaluation(result: recommendations.Result) -> None:
    base = result.evaluated[recommendations.BASELINE].test["ndcg_at_k"]
    table = Table("model", "params", "nDCG@10", "vs popularity", "P@10", "R@10", "MAP@10", "coverage")
    for e in result.evaluated.values():
        name = f"[bold]{e.model} (published)[/]" if e.model == result.published else e.model
        lift = f"{(e.test['ndcg_at_k'] / base - 1) * 100:+.0f}%" if base else "n/a"
        rest = (f"{e.test[m]:.4f}" for m in ("precision_at_k", "recall_at_k", "map_at_k"))
        coverage = f"{e.test['catalog_coverage']:.2f}"
        table.add_row(name, str(e.params), f"{e.test['ndcg_at_k']:.4f}", lift, *rest, coverage)
    console.print(table)


def recommend_command(
    user_id: Annotated[str, typer.Argument(help="The account id (as the events carry it)")],
    pseudonymized: Annotated[
        bool, typer.Option("--pseudonymized", help="USER_ID is already the lake's pseudonym")
    ] = False,
) -> None:
    """Show a user's published recommendations (gold.recommendations) with title names."""
    from batch.erasure import pseudonym

    settings = Settings()
    subject = user_id if pseudonymized else pseudonym(user_id, _key(settings))
    try:
        columns, rows = recommendations.for_user(settings.lake_dir, subject)
    except recommendations.NoFeedback as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    if not rows:
        console.print(f"[red]no recommendations for {user_id}[/red]: the lake has never seen this account")
        raise typer.Exit(1)
    table = Table(*columns, title=f"recommendations for {user_id}")
    for row in rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)


# --------------------------------------------------------------------------- experiments

experiments_app = typer.Typer(
    help="A/B experiments: results and HTML reports from gold experiment_user_metrics.",
    no_args_is_help=True,
)


@experiments_app.command("report")
@run
def experiments_report(
    experiment_id: Annotated[str | None, typer.Argument(help="One experiment (default: every one)")] = None,
) -> None:
    """Analyse experiments (SRM, Welch / two-proportion, CUPED, Holm and BH, always-valid
    mSPRT), publish gold experiment_results through its quality gate and write one HTML
    report per experiment under <lake>/_reports/experiments/."""
    from batch import experiments
    from batch import spark as spark_support

    settings = Settings()
    experiments.check_request(settings.lake_dir, experiment_id)  # before Spark starts
    spark = spark_support.session(settings, "reelpulse-experiments")
    try:
        reports = experiments.run(
            settings, spark, experiments=None if experiment_id is None else [experiment_id]
        )
    finally:
        spark.stop()
    for report in reports.values():
        _print_experiment(report)
    if not reports:
        console.print("no experiments in gold experiment_user_metrics yet")


def _print_experiment(report: experiments_module.Report) -> None:
    analysis = report.analysis
    verdict = "[red bold]FAILED: do not trust these results[/]" if analysis.srm.failed else "[green]passed[/]"
    console.rule(f"experiment {analysis.experiment_id} (exposed through {analysis.data_through})")
    console.print(f"SRM {verdict}: {analysis.srm.message}")
    for variant in analysis.treatments:
        console.print(_experiment_table(analysis, variant))
    for note in analysis.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"report: {report.html or 'not written (the lake is not on local disk)'}")


def _experiment_table(analysis: experiments_module.Analysis, variant: str) -> Table:
    from batch.experiments import number, p_text, percent_text

    table = Table(
        "metric", "method", "control", "treatment", "relative lift [CI]", "p", "p_holm", "significant",
        title=f"{variant} vs {analysis.control} (headline rows)",
    )  # fmt: skip
    for r in (r for r in analysis.results if r.variant == variant and r.headline):
        e = r.effect
        low, high = (percent_text(b) for b in e.relative_ci)
        mark = {"better": "[green]yes, better[/]", "worse": "[red]yes, worse[/]"}.get(r.outcome, "no")
        table.add_row(
            r.metric.name, r.method, number(e.control_mean), number(e.treatment_mean),
            f"{percent_text(e.relative_lift)} [{low}, {high}]", p_text(e.p_value), p_text(r.p_holm), mark,
        )  # fmt: skip
    return table


@experiments_app.command("list")
@run
def experiments_list() -> None:
    """Experiments in gold experiment_user_metrics and their exposed users per variant (DuckDB)."""
    from batch import experiments

    columns, rows = experiments.exposures(Settings().lake_dir)
    table = Table(*columns, title="experiments (gold experiment_user_metrics)")
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
    console.print(table)
    console.print(f"{len({row[0] for row in rows})} experiments")
