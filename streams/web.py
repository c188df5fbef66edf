"""HTTP endpoints on the Faust web server: current metrics as JSON, the tables, the
worker's status, and a small live page that redraws itself from ``/api/metrics``.

``GET /``                  live page (stream starts per second, playback quality and CDN
                           health by edge, top titles by viewers, open alerts)
``GET /api/metrics``       everything the page shows, as JSON
``GET /api/status``        ready flag, source positions, watermark, counters
``GET /api/tables/{name}`` a table merged across source partitions (quality, edges,
                           logins, starts, viewers) or the open alerts (alerts)
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import TYPE_CHECKING, Any

from streams.monitors import TABLES
from streams.processor import Processor

if TYPE_CHECKING:
    from streams.app import Worker

SERIES_S = 120
TOP = 10


def table_rows(processor: Processor, table: str) -> list[dict[str, Any]]:
    """Every (entity type, entity, window) of a table, merged across source partitions."""
    if table == "alerts":
        return [state.to_json() for state in processor.open.values()]
    groups = sorted({(k[1], k[2], k[3]) for k in processor.cache[table]})
    rows = []
    for entity_type, entity, window in groups:
        state = processor.merged(table, entity_type, entity, window)
        if state is not None:
            counts = {k: v for k, v in state.to_json().items() if k != "o" and not isinstance(v, dict | list)}
            rows.append(
                {
                    "entity_type": entity_type,
                    "entity": entity,
                    "window_start": window,
                    **counts,
                    **state.metrics(),
                }
            )
    return rows


def latest_window(processor: Processor, table: str, entity_type: str) -> list[dict[str, Any]]:
    """Rows of the most recent window that has data for ``entity_type``."""
    windows = [k[3] for k in processor.cache[table] if k[1] == entity_type]
    if not windows:
        return []
    window = max(windows)
    entities = sorted({k[2] for k in processor.cache[table] if k[1] == entity_type and k[3] == window})
    rows = []
    for entity in entities:
        state = processor.merged(table, entity_type, entity, window)
        if state is not None:
            rows.append({"entity": entity, "window_start": window, **state.metrics()})
    return rows


def starts_series(processor: Processor, entity_type: str, entity: str) -> list[list[int]]:
    mark = processor.watermark.value
    if mark is None:
        return []
    last = mark - mark % 1000
    series = []
    for second in range(last - (SERIES_S - 1) * 1000, last + 1000, 1000):
        state = processor.merged("starts", entity_type, entity, second)
        series.append([second, int(state.metrics()["starts_per_s"] or 0) if state else 0])
    return series


def snapshot(worker: Worker) -> dict[str, Any]:
    processor = worker.processor
    by_title = latest_window(processor, "viewers", "title")
    by_title.sort(key=lambda r: -(r["viewers"] or 0))
    logins = latest_window(processor, "logins", "source_ip")
    logins.sort(key=lambda r: -(r["failures"] or 0))
    return {
        "now": processor.now_ms(),
        "ready": worker.ready,
        "watermark": processor.watermark.value,
        "window_s": worker.book.windows.quality_s,
        "counters": dataclasses.asdict(processor.counters),
        "starts_per_s": starts_series(processor, "global", "all"),
        "playback_by_edge": latest_window(processor, "quality", "cdn_edge"),
        "playback_by_country": latest_window(processor, "quality", "country"),
        "playback_by_device": latest_window(processor, "quality", "device_type"),
        "cdn_edges": latest_window(processor, "edges", "cdn_edge"),
        "top_login_failures": logins[:TOP],
        "viewers": {"total": sum(r["viewers"] or 0 for r in by_title), "top_titles": by_title[:TOP]},
        "open_alerts": sorted(table_rows(processor, "alerts"), key=lambda a: -a["first_seen"]),
    }


def status(worker: Worker) -> dict[str, Any]:
    processor = worker.processor
    return {
        "ready": worker.ready,
        "app_id": worker.options.app_id,
        "monitors": list(worker.options.monitors),
        "watermark": processor.watermark.value,
        "started_positions": worker.started_positions,
        "positions": {f"{t}:{p}": o for (t, p), o in worker.pipeline.positions.items()},
        "pending_acks": len(worker.pending),
        "first_batch_at": worker.pipeline.first_batch_at,
        "last_batch_at": worker.pipeline.last_batch_at,
        "counters": dataclasses.asdict(processor.counters),
        "table_keys": {name: len(processor.cache[name]) for name in TABLES},
    }


def page() -> str:
    return resources.files("streams").joinpath("live.html").read_text()


def register(worker: Worker) -> None:
    app = worker.app

    @app.page("/")
    async def live(self: Any, request: Any) -> Any:
        return self.html(page())

    @app.page("/api/metrics")
    async def metrics(self: Any, request: Any) -> Any:
        return self.json(snapshot(worker))

    @app.page("/api/status")
    async def worker_status(self: Any, request: Any) -> Any:
        return self.json(status(worker))

    @app.page("/api/tables/{name}")
    async def table(self: Any, request: Any, name: str) -> Any:
        if name not in TABLES and name != "alerts":
            return self.json(
                {"error": f"no table {name!r}; known: {', '.join([*TABLES, 'alerts'])}"}, status=404
            )
        return self.json({"table": name, "rows": table_rows(worker.processor, name)})
