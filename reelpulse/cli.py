"""The ``reelpulse`` command line: local stack, contract, traffic and backfill."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batch.cli import experiments_app, forget_command, lake_app, recommend_command, sql_command
from collector.cli import collector_app
from reelpulse import airflow, registry, stack, topics
from reelpulse.clitools import run
from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings
from streams.cli import alerts_app, streams_app

if TYPE_CHECKING:
    from collector.client import CollectorClient
    from reelpulse.simulator import Incident, SimulationConfig, Simulator

app = typer.Typer(help="reelpulse: the event platform of a streaming-video service.", no_args_is_help=True)
schemas_app = typer.Typer(
    help="The event contract in schemas/: register, check, release, document.", no_args_is_help=True
)
import_app = typer.Typer(help="Backfill events from files.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")
app.add_typer(import_app, name="import")
app.add_typer(collector_app, name="collector")
app.add_typer(lake_app, name="lake")
app.add_typer(experiments_app, name="experiments")
app.command("sql")(sql_command)
app.command("forget")(forget_command)
app.command("recommend")(recommend_command)
app.add_typer(streams_app, name="streams")
app.add_typer(alerts_app, name="alerts")
app.add_typer(airflow.airflow_app, name="airflow")
console = Console()
QUIET_LOGGERS = ("httpx", "httpx2", "great_expectations")  # GX logs its setup at INFO
P = ParamSpec("P")
R = TypeVar("R")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """Configure logging once, at the entry point."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _settings() -> Settings:
    return Settings()


def _contract(settings: Settings) -> Contract:
    return Contract(settings.schemas_dir)


# --------------------------------------------------------------------------- local stack


@app.command()
@run
def setup(
    with_s3: Annotated[
        bool,
        typer.Option(
            "--with-s3", help="Also fetch S3A and the AWS SDK (about 700 MB; implied by an s3a:// lake)"
        ),
    ] = False,
    lake_key: Annotated[
        bool, typer.Option(help="Give the local lake a pseudonymization key in ./.env if it has none")
    ] = True,
) -> None:
    """Fetch Kafka, the schema registry and Spark's connectors from Maven Central (once;
    cached in the state dir), and give the local lake a pseudonymization key in ./.env."""
    settings = _settings()
    for name, path in stack.setup(settings, with_s3).items():
        console.print(f"{name}: {path}")
    env_file = Path(".env")
    if lake_key and stack.ensure_pseudonymization_key(settings, env_file):
        console.print(
            f"pseudonymization key: generated into {env_file.resolve()} "
            "(keep it: silver's pseudonyms depend on it)"
        )


@app.command()
@run
def up() -> None:
    """Start the local stack (Kafka + schema registry), create topics, register schemas."""
    settings = _settings()
    started = time.monotonic()
    pids = stack.up(settings)
    provision(settings)
    console.print(
        f"[green]stack up[/green] in {time.monotonic() - started:.1f}s: "
        f"kafka {settings.kafka_bootstrap_servers} (pid {pids['kafka']}), "
        f"registry {settings.schema_registry_url} (pid {pids['registry']})"
    )


@app.command("provision")
@run
def provision_command() -> None:
    """Create topics and register schemas on services already running (docker-compose's
    init job, a remote cluster); `up` does the same after starting the local stack."""
    provision(_settings())


def provision(settings: Settings) -> None:
    """Create the contract's topics and register every schema (both idempotent)."""
    contract = _contract(settings)
    created = topics.ensure_topics(settings, contract.topics())
    ids = registry.register_all(settings, contract)
    console.print(
        f"topics: {len(contract.topics())} ({len(created)} created); "
        f"schemas: {len(ids)} registered ({registry.COMPATIBILITY})"
    )


@app.command()
@run
def down() -> None:
    """Stop the local stack (and Airflow, if it runs); data stays in the state dir for the next `up`."""
    settings = _settings()
    stopped = (["airflow"] if airflow.stop(settings) else []) + stack.down(settings)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
@run
def status() -> None:
    """Show services, topics with their message counts, and consumer-group lag."""
    settings = _settings()
    console.print(_services_table(settings))
    if not stack.KAFKA.ready(settings):
        console.print(f"[yellow]Kafka at {settings.kafka_bootstrap_servers} is not reachable[/yellow]")
        raise typer.Exit(1)
    names = [spec.name for spec in _contract(settings).topics()]
    console.print(_topics_table(topics.topic_states(settings, names)))
    console.print(_lag_table(topics.group_lags(settings)))


def _services_table(settings: Settings) -> Table:
    table = Table("service", "endpoint", "pid", "state", title="services")
    endpoints = {"kafka": settings.kafka_bootstrap_servers, "registry": settings.schema_registry_url}
    for service in stack.SERVICES:
        pid = stack.running_pid(service, settings)
        state = "[green]ready[/green]" if service.ready(settings) else "[red]down[/red]"
        table.add_row(service.name, endpoints[service.name], str(pid or "-"), state)
    return table


def _topics_table(states: list[topics.TopicState]) -> Table:
    table = Table("topic", "partitions", "messages", title="topics")
    for state in states:
        table.add_row(state.name, str(state.partitions), f"{state.messages:,}")
    return table


def _lag_table(lags: list[topics.GroupLag]) -> Table:
    table = Table("consumer group", "topic", "lag", title="consumer groups")
    for lag in lags:
        table.add_row(lag.group, lag.topic, f"{lag.lag:,}")
    return table


@app.command()
@run
def logs(
    service: Annotated[str, typer.Argument(help="kafka or registry")] = "kafka",
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
) -> None:
    """Print the last lines of a service's log."""
    by_name = {s.name: s for s in stack.SERVICES}
    if service not in by_name:
        raise typer.BadParameter(f"choose one of {', '.join(by_name)}")
    settings = _settings()
    console.print(f"[dim]{by_name[service].log_file(settings)}[/dim]")
    print(stack.tail(by_name[service], settings, lines))


# --------------------------------------------------------------------------- contract


@schemas_app.command("register")
@run
def schemas_register() -> None:
    """Register every schema under its subject (BACKWARD_TRANSITIVE)."""
    settings = _settings()
    for name, schema_id in registry.register_all(settings, _contract(settings)).items():
        console.print(f"{name}: id {schema_id}")


@schemas_app.command("check")
@run
def schemas_check(
    against: Annotated[
        str, typer.Option(help="'registry': the versions registered; 'released': schemas/released/")
    ] = "registry",
) -> None:
    """Check every local schema for BACKWARD_TRANSITIVE compatibility; exit 1 if one breaks it."""
    checks = {"registry": registry.check_compatibility, "released": registry.check_against_released}
    if against not in checks:
        raise typer.BadParameter(f"choose one of {', '.join(checks)}", param_hint="--against")
    settings = _settings()
    results = checks[against](settings, _contract(settings))
    table = Table("subject", "result", title=f"compatibility ({registry.COMPATIBILITY})")
    for result in results:
        colour = "green" if result.compatible else "red"
        table.add_row(result.subject, f"[{colour}]{result.detail}[/{colour}]")
    console.print(table)
    if not all(result.compatible for result in results):
        raise typer.Exit(1)


@schemas_app.command("release")
@run
def schemas_release() -> None:
    """Snapshot the current schemas as released (what later changes must stay compatible with)."""
    written = registry.release(_contract(_settings()))
    console.print(f"released {len(written)} schemas to {written[0].parent}")


@schemas_app.command("docs")
@run
def schemas_docs() -> None:
    """Regenerate schemas/README.md from the .avsc files."""
    from reelpulse.docs import write_schemas_readme

    console.print(f"wrote {write_schemas_readme(_contract(_settings()))}")


# --------------------------------------------------------------------------- traffic


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9,.0f} ev/s"),
        TimeElapsedColumn(),
        console=console,
    )


def print_summary(title: str, counts: Counter[str], seconds: float) -> None:
    table = Table("event type", "events", title=title)
    for name, count in sorted(counts.items()):
        table.add_row(name, f"{count:,}")
    total = sum(counts.values())
    table.add_row("[bold]total[/bold]", f"[bold]{total:,}[/bold]")
    console.print(table)
    console.print(f"{total:,} events in {seconds:.1f}s ({total / max(seconds, 1e-9):,.0f} events/s)")


@import_app.command("ratings")
@run
def import_ratings(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV, TSV or '::' ratings file")],
    rejects: Annotated[Path | None, typer.Option(help="Rejects file (default: FILE.rejects.csv)")] = None,
    title_prefix: Annotated[str, typer.Option(help="Prefix for title ids, e.g. 'ml-'")] = "",
    user_prefix: Annotated[str, typer.Option(help="Prefix for user ids")] = "",
    source_id: Annotated[
        str | None, typer.Option(help="Stable id of a growing file (keeps event ids)")
    ] = None,
) -> None:
    """Backfill ratings (user, item, rating, timestamp) as rating events; unknown items
    become catalog titles; malformed lines go to the rejects file with their reason."""
    from reelpulse import importer

    settings = _settings()
    contract = _contract(settings)
    known = topics.read_keys(settings, contract["title"].topic)
    summary, events = importer.import_ratings(
        file,
        contract,
        known_titles=known,
        rejects_path=rejects,
        title_prefix=title_prefix,
        user_prefix=user_prefix,
        source_id=source_id,
    )
    started, counts = time.monotonic(), Counter[str]()
    size = file.stat().st_size
    with _progress() as progress, EventProducer(settings, contract, validate=False) as producer:
        task = progress.add_task(f"importing {file.name}", total=size, rate=0.0)
        for event_type, record in events:
            producer.produce(event_type, record)
            counts[event_type] += 1
            if counts.total() % 5000 == 0:
                rate = counts.total() / (time.monotonic() - started)
                progress.update(task, completed=summary.bytes_read, rate=rate)
        progress.update(task, completed=size)
    print_summary("imported", counts, time.monotonic() - started)
    console.print(summary.line())


def parse_incident(text: str) -> Incident:
    """``KIND:START_S:DURATION_S[:TARGET]``, e.g. ``edge_outage:20:15:edge-fra-01``."""
    from reelpulse.simulator import Incident

    parts = text.split(":", 3)
    if len(parts) < 3:
        raise typer.BadParameter(
            f"{text!r}: expected KIND:START_S:DURATION_S[:TARGET]", param_hint="--incident"
        )
    try:
        return Incident(parts[0], float(parts[1]), float(parts[2]), parts[3] if len(parts) > 3 else None)  # type: ignore[arg-type]
    except ValueError as error:
        raise typer.BadParameter(f"{text!r}: {error}", param_hint="--incident") from error


@app.command()
@run
def simulate(
    duration: Annotated[float | None, typer.Option(help="Seconds of traffic (event time)")] = 60.0,
    events: Annotated[int | None, typer.Option(help="Stop after this many events")] = None,
    continuous: Annotated[bool, typer.Option(help="Run until Ctrl-C (ignores --duration)")] = False,
    rate: Annotated[float, typer.Option(help="Events per second of event time")] = 2000.0,
    pace: Annotated[
        bool, typer.Option(help="Send in real time (off: as fast as possible, a backfill)")
    ] = True,
    seed: Annotated[int, typer.Option(help="Same seed, same traffic")] = 7,
    world_seed: Annotated[
        int | None,
        typer.Option(help="Seed of the catalog, users and edges (default: --seed); keep it to add traffic"),
    ] = None,
    users: Annotated[
        int, typer.Option(help="Accounts (about 5-10x --rate keeps sessions realistic)")
    ] = 10000,
    titles: Annotated[int, typer.Option()] = 200,
    edges: Annotated[int, typer.Option()] = 12,
    incident: Annotated[
        list[str] | None,
        typer.Option(
            help="KIND:START_S:DURATION_S[:TARGET]; kinds: edge_outage, login_attack, play_failure_spike"
        ),
    ] = None,
    truth: Annotated[Path, typer.Option(help="Where the ground truth is written")] = Path(
        "artifacts/simulation/truth.json"
    ),
    via_collector: Annotated[
        str | None,
        typer.Option(help="Post device events to this collector URL in batches of 100 (catalog: Kafka)"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="REELPULSE_COLLECTOR_API_KEY", help="Collector API key")
    ] = None,
) -> None:
    """Simulate platform traffic into Kafka (seeded), writing the ground truth to a file."""
    from collector.client import CollectorClient
    from reelpulse.simulator import SimulationConfig, Simulator

    if via_collector and not api_key:
        raise typer.BadParameter("--via-collector needs --api-key", param_hint="--api-key")

    now_ms = int(time.time() * 1000)
    backfill_ms = 0 if pace or continuous or duration is None else int(duration * 1000)
    config = SimulationConfig(
        seed=seed,
        world_seed=world_seed,
        start_ms=now_ms - backfill_ms,  # unpaced traffic ends now instead of running ahead
        users=users,
        titles=titles,
        edges=edges,
        rate=rate,
        duration_s=None if continuous else duration,
        max_events=events,
        incidents=tuple(parse_incident(text) for text in incident or ()),
    )
    simulator = Simulator(config)
    settings = _settings()
    client = CollectorClient(via_collector, api_key) if via_collector and api_key else None
    with EventProducer(settings, _contract(settings)) as producer:
        producer.produce_all(("title", title) for title in simulator.catalog())
        if client:  # devices post to the collector; the catalog is a backend's, straight to Kafka
            with client:
                counts, seconds = _send(simulator, client, config, pace)
        else:
            counts, seconds = _send(simulator, producer, config, pace)
    truth.parent.mkdir(parents=True, exist_ok=True)
    simulator.truth.to_json(truth)
    print_summary("simulated", counts, seconds)
    if client:
        console.print(f"collector: {client.stats.accepted:,} accepted, {client.stats.rejected:,} rejected")
    console.print(f"acknowledged by Kafka: {producer.stats.acked:,}; ground truth: {truth}")


def _send(
    simulator: Simulator, producer: EventProducer | CollectorClient, config: SimulationConfig, pace: bool
) -> tuple[Counter[str], float]:
    expected = config.max_events or (int(config.rate * config.duration_s) if config.duration_s else None)
    counts: Counter[str] = Counter()
    started = time.monotonic()
    with _progress() as progress:
        task = progress.add_task("simulating", total=expected, rate=0.0)
        try:
            for event_type, record in simulator.events():
                if pace:
                    _wait_until(started, (event_time(record) - config.start_ms) / 1000)
                producer.produce(event_type, record)
                counts[event_type] += 1
                if counts.total() % 2000 == 0:
                    progress.update(
                        task, completed=counts.total(), rate=counts.total() / (time.monotonic() - started)
                    )
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: flushing what was sent[/yellow]")
        progress.update(task, completed=counts.total(), total=counts.total())
    return counts, time.monotonic() - started


def event_time(record: dict) -> int:
    return int(record["envelope"]["event_time"] if "envelope" in record else record["event_time"])


def _wait_until(started: float, offset_s: float) -> None:
    delay = offset_s - (time.monotonic() - started)
    if delay > 0.002:
        time.sleep(delay)
