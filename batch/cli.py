"""``reelpulse lake ...`` and ``reelpulse sql``: build the lake, and ask it questions."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from batch import sql as lake_sql
from reelpulse.settings import Settings

lake_app = typer.Typer(help="The Delta Lake: build bronze and silver from Kafka.", no_args_is_help=True)
console = Console()


@lake_app.command("build")
def build(
    layer: Annotated[str, typer.Option(help="Build up to this layer: bronze or silver")] = "silver",
) -> None:
    """Ingest what is new in Kafka into bronze, then bring silver up to date (exactly once;
    a second run with nothing new changes nothing)."""
    from batch import bronze, silver
    from batch import spark as spark_support

    if layer not in {"bronze", "silver"}:
        raise typer.BadParameter("choose bronze or silver", param_hint="--layer")
    settings = Settings()
    key = _key(settings) if layer == "silver" else b""
    spark = spark_support.session(settings, "reelpulse-lake")
    try:
        _timed("bronze", lambda: bronze.run(settings, spark))
        if layer == "silver":
            policy = silver.Policy.from_settings(settings)
            _timed("silver", lambda: silver.run(settings, spark, pseudonymization_key=key, policy=policy))
    finally:
        spark.stop()
    console.print(f"lake at {settings.lake_dir}; try: reelpulse sql --tables")


def _key(settings: Settings) -> bytes:
    try:
        return settings.pseudonymization_key()
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error


def _timed(name: str, job: object) -> None:
    started = time.monotonic()
    assert callable(job)
    job()
    console.print(f"{name}: done in {time.monotonic() - started:.1f}s")


def sql_command(
    query: Annotated[str | None, typer.Argument(help="SQL over views like silver.playback_sessions")] = None,
    tables: Annotated[bool, typer.Option("--tables", help="List every table and its columns")] = False,
    version: Annotated[
        list[str] | None, typer.Option(help="Time travel: TABLE=VERSION, e.g. silver.login=3")
    ] = None,
    as_of: Annotated[str | None, typer.Option(help="Time travel: every table as of this ISO time")] = None,
) -> None:
    """Run read-only DuckDB SQL over the lake (bronze.*, silver.*, gold.* views)."""
    lake_dir = Settings().lake_dir
    if tables:
        _print_tables(lake_sql.describe(lake_dir))
        return
    if not query:
        raise typer.BadParameter("give a query, or --tables")
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
