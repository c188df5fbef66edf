"""``reelpulse collector ...``: run the collector and manage its API keys."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from collector import keys
from reelpulse.clitools import run
from reelpulse.settings import Settings

collector_app = typer.Typer(help="The HTTP collector devices post events to.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the collector's clients (stored hashed).", no_args_is_help=True)
collector_app.add_typer(keys_app, name="keys")
console = Console()
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
P = ParamSpec("P")
R = TypeVar("R")


@collector_app.command()
@run
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (one per core)")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs throughput)")] = False,
) -> None:
    """Run the collector with uvicorn: POST /v1/events, /healthz, /readyz, /metrics, /docs."""
    import uvicorn

    Settings()  # fail now, naming the variable, rather than in every worker
    metrics_dir = None
    if workers > 1 and MULTIPROC_ENV not in os.environ:
        # Each worker counts in files here; /metrics adds them up.
        metrics_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="reelpulse-collector-metrics-")
    try:
        uvicorn.run(
            "collector.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level="info",
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@keys_app.command("create")
@run
def keys_create(name: Annotated[str, typer.Argument(help="Client name, e.g. android-app")]) -> None:
    """Create a client and print its API key (shown once, stored only as a salted hash)."""
    path = keys.keys_path(Settings())
    key = keys.create(path, name)
    console.print(f"client [bold]{name}[/bold] created in {path}; its API key (shown once):")
    print(key)


@keys_app.command("rotate")
@run
def keys_rotate(
    name: Annotated[str, typer.Argument(help="Client name")],
    grace_hours: Annotated[float, typer.Option(min=0, help="How long the current key keeps working")] = 24.0,
) -> None:
    """Give a client a new API key; the current one keeps working for the grace period."""
    key = keys.rotate(keys.keys_path(Settings()), name, grace_hours * 3600)
    console.print(f"new API key of [bold]{name}[/bold] (shown once); the old one works {grace_hours:g} h:")
    print(key)


@keys_app.command("revoke")
@run
def keys_revoke(name: Annotated[str, typer.Argument(help="Client name")]) -> None:
    """Remove a client and all its keys; a running collector refuses them within a second."""
    keys.revoke(keys.keys_path(Settings()), name)
    console.print(f"client [bold]{name}[/bold] revoked")


@keys_app.command("list")
@run
def keys_list() -> None:
    """Clients, when they were created and their keys' ids and expiry (never a secret)."""
    path = keys.keys_path(Settings())
    table = Table("client", "created", "key ids", "expires", title=f"API keys in {path}")
    for client in sorted(keys.load(path).values(), key=lambda c: c.name):
        table.add_row(
            client.name,
            keys.iso(client.created_at),
            "\n".join(c.key_id for c in client.credentials),
            "\n".join(keys.iso(c.expires_at) if c.expires_at else "never" for c in client.credentials),
        )
    console.print(table)
