"""Shared pieces of the command groups (reelpulse, collector, streams, lake)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from reelpulse.errors import ReelpulseError

P = ParamSpec("P")
R = TypeVar("R")
console = Console()


def run(command: Callable[P, R]) -> Callable[P, R]:
    """Turn reelpulse errors into one red line and exit code 1, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ReelpulseError as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(1) from error

    return wrapper
