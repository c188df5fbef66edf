"""Where everything lives in the lake: one layout for every job, query and command.

``<root>/{bronze,silver,gold}/<table>`` are the Delta tables people read;
``<root>/_checkpoints`` the streaming checkpoints, ``<root>/_audit`` batches held by the
quality gates, ``<root>/_quality`` validation results and Data Docs, ``<root>/_erasure``
erasure receipts. ``root`` is a local path or an ``s3a://`` URI.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYERS = ("bronze", "silver", "gold")


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
