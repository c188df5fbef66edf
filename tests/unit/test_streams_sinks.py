"""Webhook delivery policy, notification lines, the Faust patch guard and the web snapshot,
without services (httpx's MockTransport stands in for the receiver)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from streams import fastpath, web
from streams.errors import WebhookError
from streams.processor import MemoryStore, Processor
from streams.sinks import Notification, Webhook, line, payload, retry_delay
from tests.unit.test_streams_processing import fast_rules

ALERT = {
    "alert_id": "edge_play_failures-abc",
    "event_time": 1_767_225_600_000,
    "rule": "edge_play_failures",
    "status": "FIRING",
    "severity": "CRITICAL",
    "entity_type": "cdn_edge",
    "entity": "edge-iad-01",
    "window_start": 1_767_225_600_000,
    "window_end": 1_767_225_660_000,
    "observed": 0.41,
    "threshold": 0.15,
    "baseline": None,
    "first_seen": 1_767_225_601_000,
    "message": "edge_play_failures on cdn_edge edge-iad-01",
}


def notification() -> Notification:
    return Notification(dict(ALERT), message=None)  # type: ignore[arg-type]


def sink(responses: list[Any], **kwargs: Any) -> tuple[Webhook, list[httpx.Request], list[float]]:
    seen: list[httpx.Request] = []
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, text="nope" if answer >= 300 else "ok")

    client = httpx.Client(transport=httpx.MockTransport(handler))
    return Webhook("http://hook.test/alerts", client, sleep=sleeps.append, **kwargs), seen, sleeps


def test_webhook_posts_json_with_an_idempotency_key() -> None:
    hook, seen, _ = sink([200])
    assert hook.deliver(notification()) == 1
    request = seen[0]
    assert request.headers["idempotency-key"] == "edge_play_failures-abc:FIRING"
    assert request.headers["content-type"] == "application/json"
    assert httpx.Response(200, content=request.content).json() == payload(notification())


def test_webhook_retries_transient_failures_with_backoff() -> None:
    hook, seen, sleeps = sink([503, httpx.ConnectError("refused"), 429, 200], backoff_s=0.5)
    assert hook.deliver(notification()) == 4
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(seen) == 4


def test_webhook_gives_up_on_client_errors_at_once() -> None:
    hook, seen, sleeps = sink([400])
    with pytest.raises(WebhookError, match="HTTP 400") as error:
        hook.deliver(notification())
    assert error.value.permanent
    assert len(seen) == 1
    assert sleeps == []


def test_webhook_gives_up_after_max_attempts() -> None:
    hook, seen, _ = sink([500, 502, 504], max_attempts=3)
    with pytest.raises(WebhookError, match="gave up after 3 attempts"):
        hook.deliver(notification())
    assert len(seen) == 3


def test_retry_delay_doubles_up_to_a_cap() -> None:
    assert [retry_delay(n, 0.5, cap_s=3) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_notification_line_names_status_rule_entity_and_id() -> None:
    text = line(ALERT)
    for part in (
        "FIRING",
        "CRITICAL",
        "edge_play_failures",
        "cdn_edge=edge-iad-01",
        "id=edge_play_failures-abc",
    ):
        assert part in text


def test_faust_patches_match_the_pinned_faust() -> None:
    fastpath.check()


def test_snapshot_of_an_empty_worker_is_json_ready() -> None:
    processor = Processor(fast_rules(), MemoryStore(), 3)
    worker = SimpleNamespace(
        processor=processor,
        ready=False,
        book=fast_rules(),
        options=SimpleNamespace(app_id="x", monitors=("playback",)),
        pipeline=SimpleNamespace(positions={}, first_batch_at=None, last_batch_at=None),
        pending=[],
        started_positions={},
    )
    snap = web.snapshot(worker)  # type: ignore[arg-type]
    assert snap["starts_per_s"] == []
    assert snap["open_alerts"] == []
    assert web.status(worker)["ready"] is False  # type: ignore[arg-type]
    assert "<svg" in web.page()
    assert "/api/metrics" in web.page()
