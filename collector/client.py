"""A device-like client: post events to a collector in batches, as phones and TVs do.

Retries keep the collector's guarantee whole: on 503 the events the collector did not
accept are sent again, on 429 the batch waits for Retry-After, and on a lost connection
the whole batch is sent again, always with the same event ids (duplicates are removed
downstream by ``event_id``). Rejected events are not resent: the collector kept them in
the dead-letter topic with their reason.

    with CollectorClient("http://127.0.0.1:8080", key) as client:
        for event_type, record in events:
            client.produce(event_type, record)
    client.stats.accepted
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import orjson

from collector.errors import CollectorError

log = logging.getLogger("collector.client")

BATCH_SIZE = 100
MAX_ATTEMPTS = 8
MAX_WAIT_S = 30.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DONE_STATUSES = frozenset({200, 207, 422})


@dataclass
class ClientStats:
    """What the collector answered so far."""

    accepted: int = 0
    rejected: int = 0
    requests: int = 0
    retries: int = 0
    rejections: dict[str, int] = field(default_factory=dict)


class CollectorClient:
    """Buffers events and posts them in batches of ``batch_size``."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        batch_size: int = BATCH_SIZE,
        compress: bool = False,
        timeout_s: float = 30.0,
        max_attempts: int = MAX_ATTEMPTS,
        http: httpx.Client | None = None,
    ) -> None:
        self.endpoint = f"{url.rstrip('/')}/v1/events"
        self.batch_size, self.compress, self.max_attempts = batch_size, compress, max_attempts
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        self._http = http or httpx.Client(timeout=timeout_s)
        self._headers = headers
        self._buffer: list[dict[str, Any]] = []
        self.stats = ClientStats()

    def produce(self, event_type: str, record: Mapping[str, Any]) -> None:
        self._buffer.append({"type": event_type, "event": record})
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def produce_all(self, events: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        count = 0
        for event_type, record in events:
            self.produce(event_type, record)
            count += 1
        return count

    def flush(self) -> None:
        """Post what is buffered until the collector has accepted or rejected all of it."""
        batch, self._buffer = self._buffer, []
        for attempt in range(1, self.max_attempts + 1):
            if not batch:
                return
            batch = self._attempt(batch, attempt)
        raise CollectorError(f"{len(batch)} events not accepted after {self.max_attempts} attempts")

    def _attempt(self, batch: list[dict[str, Any]], attempt: int) -> list[dict[str, Any]]:
        """Post once; returns the events still to send."""
        if attempt > 1:
            self.stats.retries += 1
        body = orjson.dumps({"events": batch})
        if self.compress:
            body = gzip.compress(body, 1)
        try:
            response = self._http.post(self.endpoint, content=body, headers=self._headers)
        except httpx.TransportError as error:
            log.warning("collector unreachable (%s); retrying", error)
            time.sleep(min(MAX_WAIT_S, 0.5 * 2**attempt))
            return batch
        self.stats.requests += 1
        if response.status_code in DONE_STATUSES:
            self._count(response.json())
            return []
        if response.status_code not in RETRY_STATUSES:
            raise CollectorError(f"collector refused the batch: HTTP {response.status_code} {response.text}")
        time.sleep(min(MAX_WAIT_S, float(response.headers.get("retry-after", 2**attempt))))
        if response.status_code == 503 and "results" in response.json():
            return self._unaccepted(batch, response.json())
        return batch

    def _count(self, answer: dict[str, Any]) -> None:
        self.stats.accepted += answer["accepted"]
        self.stats.rejected += answer["rejected"]
        for result in answer["results"]:
            if result["status"] == "rejected":
                kind = result["error_type"]
                self.stats.rejections[kind] = self.stats.rejections.get(kind, 0) + 1

    def _unaccepted(self, batch: list[dict[str, Any]], answer: dict[str, Any]) -> list[dict[str, Any]]:
        """Count what was settled; keep the events to send again."""
        settled = {**answer, "results": [r for r in answer["results"] if r["status"] != "not_accepted"]}
        self._count(settled)
        results = answer["results"]
        return [event for event, r in zip(batch, results, strict=True) if r["status"] == "not_accepted"]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self.flush()
        finally:
            self.close()


def post_events(
    url: str, api_key: str, events: Iterable[tuple[str, Mapping[str, Any]]], **options: Any
) -> ClientStats:
    """Post ``(event_type, record)`` pairs in batches; returns what the collector answered."""
    with CollectorClient(url, api_key, **options) as client:
        client.produce_all(events)
    return client.stats
