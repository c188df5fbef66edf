"""Where everything lives in the lake: one layout for every job, query and command.

``<root>/{bronze,silver,gold}/<table>`` are the Delta tables people read;
``<root>/_checkpoints`` the streaming checkpoints, ``<root>/_audit`` batches held by the
quality gates, ``<root>/_quality`` validation results and Data Docs, ``<root>/_erasure``
erasure receipts, ``<root>/_reports`` rendered reports (recommendations, A/B
experiments). ``root`` is a local path or an ``s3a://`` URI.

:func:`tables` lists the Delta tables found under a local root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from reelpulse.errors import ReelpulseError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

LAYERS = ("bronze", "silver", "gold")
AUDIT = "_audit"


class LakeLocationError(ReelpulseError, ValueError):
    """The lake is not on a file system this code can list."""


@dataclass(frozen=True)
class Lake:
    """Paths of the lake under one root."""

    root: str

    def table(self, layer: str, name: str) -> str:
        if layer not in LAYERS:
            raise ValueError(f"unknown lake layer {layer!r}: choose one of {', '.join(LAYERS)}")
        return f"{self.root}/{layer}/{name}"

    def bronze(self, name: str) -> str:
        return self.table("bronze", name)

    def silver(self, name: str) -> str:
        return self.table("silver", name)

    def gold(self, name: str) -> str:
        return self.table("gold", name)

    def checkpoint(self, topic: str) -> str:
        return f"{self.root}/_checkpoints/bronze/{topic}"

    @property
    def offsets(self) -> str:
        """Silver's high-water marks of the bronze rows it has merged."""
        return self.silver("_state/bronze_offsets")

    def audit(self, layer: str, name: str) -> str:
        """Where a batch waits for its quality gate (and stays when it fails)."""
        return f"{self.root}/_audit/{layer}/{name}"

    @property
    def quality(self) -> str:
        """Validation results and the Data Docs site."""
        return f"{self.root}/_quality"

    @property
    def erasure(self) -> str:
        """Erasure receipts written by ``reelpulse forget``."""
        return f"{self.root}/_erasure"

    def reports(self, kind: str) -> str:
        """Rendered reports of one kind (``recommendations``, ``experiments``): HTML, not tables."""
        return f"{self.root}/_reports/{kind}"


@dataclass(frozen=True)
class LakeTable:
    """One Delta table: its layer, its name under the layer (``_state/bronze_offsets`` for a
    nested one), its path, and whether it is a batch held by a quality gate (``_audit``)."""

    layer: str
    name: str
    path: str
    audit: bool = False

    @property
    def qualified(self) -> str:
        """``silver.playback_sessions``; ``_audit.silver.dim_users`` for a held batch."""
        return f"{AUDIT}.{self.layer}.{self.name}" if self.audit else f"{self.layer}.{self.name}"


def local_path(uri: str) -> Path:
    """The local path of a lake location (a path or a ``file:`` URI)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    raise LakeLocationError(
        f"{uri} is not on the local file system: listing tables and writing receipts need a local lake"
    )


def tables(root: str, *, audit: bool = False) -> list[LakeTable]:
    """Every Delta table under ``root``, layer by layer and by name, nested ones included
    (``silver/_state/bronze_offsets``); with ``audit``, also the batches held under ``_audit``."""
    base = local_path(root)
    found = [LakeTable(layer, name, path) for layer in LAYERS for name, path in _walk(base / layer)]
    if audit:
        for layer in LAYERS:
            found += [LakeTable(layer, name, path, True) for name, path in _walk(base / AUDIT / layer)]
    return found


def _walk(directory: Path, prefix: str = "") -> list[tuple[str, str]]:
    """``(name, path)`` of the Delta tables in ``directory``: a folder with a ``_delta_log`` is
    a table once its first commit is written (a writer stopped before that leaves no table;
    its next run creates it), never searched further; any other folder is searched for
    tables."""
    if not directory.is_dir():
        return []
    found = []
    for child in sorted(p for p in directory.iterdir() if p.is_dir()):
        if (child / "_delta_log").is_dir():
            if any((child / "_delta_log").glob("*.json")):
                found.append((f"{prefix}{child.name}", str(child)))
        else:
            found += _walk(child, f"{prefix}{child.name}/")
    return found


# A table's rows on their way into the lake pass through an audit (the quality gate's
# write-audit-publish): it returns the rows to write, or raises and nothing is written.
Audit = Callable[[str, "DataFrame"], "DataFrame"]


def exists(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table is at ``path``."""
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


def unaudited(table: str, frame: DataFrame) -> DataFrame:
    """The audit of a job run without quality gates: the rows as they are."""
    return frame
