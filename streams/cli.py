"""``reelpulse streams worker`` (also ``python -m streams worker``) and ``reelpulse alerts
tail|webhook``. Heavy imports (Faust, the registry client) happen inside the commands so
other ``reelpulse`` commands stay quick."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from reelpulse.clitools import run
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from streams.codec import WireDecoder
    from streams.sinks import Notification

streams_app = typer.Typer(help="Real-time monitors (Faust workers).", no_args_is_help=True)
alerts_app = typer.Typer(help="Consumers of reelpulse.alerts: console view, webhook.", no_args_is_help=True)
console = Console()
P = ParamSpec("P")
R = TypeVar("R")
MONITORS = ("playback", "cdn", "login")


@streams_app.callback()
def streams_group() -> None:
    """Real-time monitors (Faust workers)."""


@streams_app.command()
@run
def worker(
    monitors: Annotated[str, typer.Option(help="Comma-separated: playback, cdn, login")] = ",".join(MONITORS),
    app_id: Annotated[str | None, typer.Option(help="Consumer group and table prefix")] = None,
    web_port: Annotated[int | None, typer.Option(help="Port of the web endpoints and live page")] = None,
    web_host: Annotated[str, typer.Option(help="Address the web server binds")] = "127.0.0.1",
    rules: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Rules file")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="RocksDB tables (default: <state dir>/streams/<app id>)")
    ] = None,
    start_at: Annotated[str, typer.Option(help="Where a new group starts: latest or earliest")] = "latest",
    log_level: Annotated[str, typer.Option(help="crit, error, warn, info or debug")] = "info",
) -> None:
    """Run a Faust worker with the chosen monitors until SIGTERM or Ctrl-C."""
    from streams.app import WorkerOptions, create_worker
    from streams.app import run as run_worker

    chosen = tuple(m.strip() for m in monitors.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MONITORS]
    if unknown or not chosen:
        raise typer.BadParameter(f"choose from {', '.join(MONITORS)}", param_hint="--monitors")
    if start_at not in ("latest", "earliest"):
        raise typer.BadParameter("latest or earliest", param_hint="--start-at")
    settings = Settings()
    options = WorkerOptions(
        app_id=app_id or settings.streams_app_id,
        monitors=chosen,
        web_port=web_port or settings.streams_web_port,
        web_host=web_host,
        rules=rules or settings.streams_rules,
        data_dir=data_dir,
        start_at=start_at,
    )
    built = create_worker(settings, options)
    console.print(
        f"[green]streams worker[/green] {options.app_id}: monitors {', '.join(chosen)}; "
        f"live page http://{web_host}:{options.web_port}/"
    )
    run_worker(built, log_level)


def _alerts_decoder(settings: Settings) -> WireDecoder:
    from reelpulse import registry
    from reelpulse.contract import Contract
    from streams.codec import WireDecoder, registry_fetcher

    contract = Contract(settings.schemas_dir)
    return WireDecoder(contract, registry_fetcher(registry.client(settings)), ["reelpulse.alerts"])


@alerts_app.command()
@run
def tail(
    group: Annotated[
        str, typer.Option(help="Consumer group (resumes where it stopped)")
    ] = "reelpulse-alerts-tail",
    from_beginning: Annotated[bool, typer.Option(help="A new group starts at the oldest alert")] = False,
    plain: Annotated[bool, typer.Option(help="One line per notification instead of the live table")] = False,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
) -> None:
    """Show open and resolved alerts as they arrive."""
    from streams.sinks import AlertFeed, line

    settings = Settings()
    feed = AlertFeed(settings, _alerts_decoder(settings), group, from_beginning)
    deadline = time.monotonic() + duration if duration else None
    view = _AlertView()
    try:
        if plain:
            while deadline is None or time.monotonic() < deadline:
                for notification in feed.poll():
                    print(line(notification.alert), flush=True)
                    feed.commit(notification.message)
            return
        with Live(view.table(), console=console, refresh_per_second=4) as live:
            while deadline is None or time.monotonic() < deadline:
                for notification in feed.poll():
                    view.add(notification)
                    live.console.print(line(notification.alert))
                    live.update(view.table())
                    feed.commit(notification.message)
    except KeyboardInterrupt:
        pass
    finally:
        feed.close()


class _AlertView:
    """Open alerts and the most recently resolved ones."""

    def __init__(self) -> None:
        self.open: dict[str, dict[str, object]] = {}
        self.resolved: list[dict[str, object]] = []

    def add(self, notification: Notification) -> None:
        alert = notification.alert
        if alert["status"] == "FIRING":
            self.open[str(alert["alert_id"])] = alert
        else:
            self.open.pop(str(alert["alert_id"]), None)
            self.resolved = [alert, *self.resolved][:10]

    def table(self) -> Table:
        from streams.sinks import iso

        table = Table("status", "severity", "rule", "entity", "observed", "since", title="alerts")
        for alert in [*self.open.values(), *self.resolved]:
            colour = "red" if alert["status"] == "FIRING" else "green"
            table.add_row(
                f"[{colour}]{alert['status']}[/{colour}]",
                str(alert["severity"]),
                str(alert["rule"]),
                f"{alert['entity_type']}={alert['entity']}",
                f"{float(alert['observed']):.4g}",  # type: ignore[arg-type]
                iso(alert["first_seen"]),  # type: ignore[arg-type]
            )
        return table


@alerts_app.command()
@run
def webhook(
    url: Annotated[str, typer.Argument(help="Where each notification is POSTed as JSON")],
    group: Annotated[
        str, typer.Option(help="Consumer group (resumes where it stopped)")
    ] = "reelpulse-alerts-webhook",
    from_beginning: Annotated[bool, typer.Option(help="A new group starts at the oldest alert")] = False,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts before giving up on a notification")] = 5,
    backoff: Annotated[float, typer.Option(help="Seconds before the first retry; doubles each retry")] = 0.5,
    timeout: Annotated[float, typer.Option(help="Seconds per HTTP request")] = 5.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
) -> None:
    """POST every alert notification to URL; permanent failures go to reelpulse.deadletter."""
    import httpx

    from reelpulse.contract import Contract
    from reelpulse.producer import EventProducer
    from streams.errors import WebhookError
    from streams.sinks import AlertFeed, Webhook, line, webhook_dead_letter

    settings = Settings()
    feed = AlertFeed(settings, _alerts_decoder(settings), group, from_beginning)
    deadline = time.monotonic() + duration if duration else None
    delivered = failed = 0
    with (
        httpx.Client(timeout=timeout) as client,
        EventProducer(settings, Contract(settings.schemas_dir)) as dlq,
    ):
        sink = Webhook(url, client, max_attempts, backoff)
        try:
            while deadline is None or time.monotonic() < deadline:
                for notification in feed.poll():
                    try:
                        attempts = sink.deliver(notification)
                        delivered += 1
                        console.print(f"delivered ({attempts} attempt(s)): {line(notification.alert)}")
                    except WebhookError as error:
                        failed += 1
                        dlq.produce(
                            "dead_letter", webhook_dead_letter(notification, error, int(time.time() * 1000))
                        )
                        dlq.flush()
                        console.print(f"[red]dead-lettered[/red] {notification.key}: {error.reason}")
                    feed.commit(notification.message)
        except KeyboardInterrupt:
            pass
        finally:
            feed.close()
    console.print(f"webhook: {delivered} delivered, {failed} dead-lettered")
