"""The collector service: ``POST /v1/events``, health, readiness, metrics, OpenAPI.

:func:`create_app` builds the ASGI app (FastAPI); uvicorn runs it
(``reelpulse collector serve``). What a request goes through, in order:

1. API key (``Authorization: Bearer`` or ``X-API-Key``) -> 401
2. ``Content-Type: application/json`` -> 415; ``Content-Encoding`` gzip or none -> 415
3. body size, before and after gzip -> 413
4. gzip, JSON and batch shape -> 400 (the body is kept as one dead letter); too many events -> 413
5. the client's token bucket, one token per event -> 429 with Retry-After
6. each event: shape, type, Avro schema, clock skew -> accepted, or rejected with a dead letter
7. produce every record (events and dead letters) and wait for Kafka's acknowledgements
   -> 200 all accepted / 207 some rejected / 422 all rejected, or 503 with Retry-After
   when any record was not acknowledged in time (those events are ``not_accepted``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from collector import wire
from collector.batch import (
    INTERNAL_TYPES,
    BodyError,
    Outcome,
    Rejection,
    Validator,
    parse_batch,
    read_body,
    request_headers,
)
from collector.errors import CollectorError
from collector.keys import KeyStore, keys_path
from collector.limits import RateLimiter, retry_after
from collector.sink import KafkaSink, Sink
from reelpulse import registry
from reelpulse.contract import Contract
from reelpulse.settings import Settings, secret_value

log = logging.getLogger("collector")

JSON = "application/json"
UNAVAILABLE_RETRY_AFTER_S = 5
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The collector's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        prefix = "reelpulse_collector"
        self.accepted = Counter(
            f"{prefix}_events_accepted",
            "Events acknowledged by Kafka.",
            ["event_type"],
            registry=self.registry,
        )
        self.rejected = Counter(
            f"{prefix}_events_rejected",
            "Events refused, by error type (each kept as a dead letter).",
            ["error_type"],
            registry=self.registry,
        )
        self.not_accepted = Counter(
            f"{prefix}_events_not_accepted", "Events not acknowledged in time (503).", registry=self.registry
        )
        self.requests = Counter(
            f"{prefix}_requests", "Requests to POST /v1/events by status.", ["status"], registry=self.registry
        )
        self.latency = Histogram(
            f"{prefix}_request_seconds",
            "Time to answer POST /v1/events.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        if MULTIPROC_ENV in os.environ:  # several uvicorn workers: add up every worker's files
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)

    def count(self, outcomes: list[Outcome], acked: list[bool]) -> None:
        accepted: Tally[str] = Tally()
        rejected: Tally[str] = Tally()
        missing = 0
        for outcome, ok in zip(outcomes, acked, strict=True):
            if not ok:
                missing += 1
            elif outcome.rejection is not None:
                rejected[outcome.rejection.error_type] += 1
            else:
                accepted[outcome.event_type or ""] += 1
        for name, n in accepted.items():
            self.accepted.labels(name).inc(n)
        for name, n in rejected.items():
            self.rejected.labels(name).inc(n)
        if missing:
            self.not_accepted.inc(missing)


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the hot path. A request makes hundreds of
    dicts (its events), so collections run every couple of requests, and each older
    generation pass walked every object the app holds (FastAPI, pydantic, the contract).
    Freezing what exists after start-up takes those out of every later pass."""
    gc.collect()
    gc.freeze()


def reply(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=dict(headers or {}), media_type=JSON)


def refuse(status: int, error: str, reason: str, headers: Mapping[str, str] | None = None) -> Response:
    return reply(status, {"error": error, "reason": reason}, headers)


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


def media_type_problem(content_type: str | None) -> str | None:
    """Why a Content-Type is refused, or ``None`` for JSON in UTF-8."""
    media, *params = (part.strip().lower() for part in (content_type or "").split(";"))
    if media != JSON:
        return f"Content-Type must be {JSON}, got {content_type or 'none'!r}"
    for param in params:
        name, _, value = param.partition("=")
        if name == "charset" and value.strip('"') not in ("utf-8", "utf8"):
            return "JSON must be UTF-8"
    return None


class Collector:
    """Everything a worker holds: contract, validator, keys, limits, Kafka, metrics."""

    def __init__(
        self,
        settings: Settings,
        *,
        contract: Contract | None = None,
        schema_ids: Mapping[str, int] | None = None,
        sink: Sink | None = None,
        keys: KeyStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.collector_max_batch_events > settings.collector_rate_limit_burst:
            raise CollectorError(
                "REELPULSE_COLLECTOR_RATE_LIMIT_BURST must be at least "
                "REELPULSE_COLLECTOR_MAX_BATCH_EVENTS, or a full batch could never be sent"
            )
        self.settings, self.clock = settings, clock
        self.contract = contract or Contract(settings.schemas_dir)
        self.schema_ids = dict(schema_ids) if schema_ids else None
        self.sink: Sink = sink or KafkaSink(settings)
        self.keys = keys
        self.limiter = RateLimiter(
            settings.collector_rate_limit_events_per_s, settings.collector_rate_limit_burst
        )
        self.metrics = Metrics()
        self.validator: Validator | None = None

    async def start(self) -> None:
        """Resolve schema ids once (never per record), load the keys, start producing."""
        if self.schema_ids is None:
            self.schema_ids = await asyncio.to_thread(registry.lookup_ids, self.settings, self.contract)
        self.validator = Validator(self.contract, self.schema_ids, self.settings.collector_clock_skew_s)
        if self.keys is None:
            self.keys = KeyStore(keys_path(self.settings), self.clock)
        if not len(self.keys):
            log.warning(
                "no API keys in %s: every request gets 401; create one with "
                "`reelpulse collector keys create NAME`",
                self.keys.path,
            )
        await self.sink.start()
        settle_garbage_collector()

    async def stop(self) -> None:
        await self.sink.stop()

    # ----------------------------------------------------------------------- POST /v1/events

    async def post_events(self, request: Request) -> Response:
        started = time.perf_counter()
        response = await self._post_events(request)
        self.metrics.requests.labels(str(response.status_code)).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _post_events(self, request: Request) -> Response:
        assert self.keys is not None
        assert self.validator is not None
        client = self.keys.authenticate(presented_key(request))
        if client is None:
            headers = {"WWW-Authenticate": "Bearer"}
            return refuse(401, "unauthorized", "missing, unknown, revoked or expired API key", headers)
        problem = media_type_problem(request.headers.get("content-type"))
        if problem:
            return refuse(415, "unsupported_media_type", problem)
        now_ms = int(self.clock() * 1000)
        letter_headers = request_headers(client, request.headers.get("user-agent"))
        raw = b""
        try:
            raw = await self._read(request)
            encoding = request.headers.get("content-encoding", "").strip().lower() or None
            items = parse_batch(read_body(raw, encoding, self.settings.collector_max_body_bytes), self._max())
        except BodyError as error:
            return await self._refuse_body(client, error, raw, now_ms, letter_headers)
        wait = self.limiter.take(client, len(items), self.clock())
        if wait:
            return self._rate_limited(client, wait)
        outcomes = [self.validator.outcome(item, now_ms, letter_headers) for item in items]
        acked = await self.sink.send([o.record for o in outcomes])
        self.metrics.count(outcomes, acked)
        return self._answer(outcomes, acked)

    def _max(self) -> int:
        return self.settings.collector_max_batch_events

    async def _read(self, request: Request) -> bytes:
        """The raw body; 413 as soon as it is larger than the limit (never read whole)."""
        limit = self.settings.collector_max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes", dead_letter=False)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes", dead_letter=False)
            chunks.append(chunk)
        return b"".join(chunks)

    def _rate_limited(self, client: str, wait: float) -> Response:
        reason = f"client {client!r} exceeds {self.limiter.rate:g} events/s (burst {self.limiter.burst:g})"
        return refuse(429, "rate_limited", reason, {"Retry-After": retry_after(wait)})

    async def _refuse_body(
        self, client: str, error: BodyError, raw: bytes, now_ms: int, headers: list[dict[str, Any]]
    ) -> Response:
        """Refuse the whole body; a malformed one is kept as one dead letter first."""
        if error.dead_letter:
            wait = self.limiter.take(client, 1, self.clock())
            if wait:
                return self._rate_limited(client, wait)
            assert self.validator is not None
            rejection = Rejection(error.error_type, error.reason)
            record = self.validator.dead_letter(rejection, raw, now_ms, headers)
            if not (await self.sink.send([record]))[0]:
                return self._unavailable({"error": "kafka_unavailable", "reason": "retry later"})
            self.metrics.rejected.labels(error.error_type).inc()
        return refuse(error.status, error.error_type, error.reason)

    def _answer(self, outcomes: list[Outcome], acked: list[bool]) -> Response:
        results = [o.result(ok) for o, ok in zip(outcomes, acked, strict=True)]
        missing = acked.count(False)
        rejected = sum(1 for o, ok in zip(outcomes, acked, strict=True) if ok and o.rejection)
        accepted = len(outcomes) - missing - rejected
        body = {"accepted": accepted, "rejected": rejected, "not_accepted": missing, "results": results}
        if missing:
            return self._unavailable(body)
        status = 200 if not rejected else 422 if not accepted else 207
        return reply(status, body)

    def _unavailable(self, body: Any) -> Response:
        return reply(503, body, {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})

    # ----------------------------------------------------------------------- probes

    async def readyz(self) -> Response:
        checks = {
            "kafka": await self.sink.ready() or "ok",
            "registry": await self._registry_problem() or "ok",
        }
        ok = all(value == "ok" for value in checks.values())
        return reply(200 if ok else 503, {"status": "ready" if ok else "not ready", "checks": checks})

    async def _registry_problem(self) -> str | None:
        url = f"{self.settings.schema_registry_url}/subjects"
        user = self.settings.schema_registry_username
        auth = (user, secret_value(self.settings.schema_registry_password)) if user else None
        try:
            async with httpx.AsyncClient(timeout=2.0, auth=auth) as client:
                response = await client.get(url)
        except httpx.HTTPError as error:
            return f"registry at {self.settings.schema_registry_url} is not reachable: {error!r}"
        return None if response.status_code == 200 else f"registry answered HTTP {response.status_code}"

    async def healthz(self) -> Response:
        return reply(200, {"status": "ok", "checks": {}})

    async def metrics_page(self) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings | None = None, **kwargs: Any) -> FastAPI:
    """The collector's ASGI app; ``kwargs`` go to :class:`Collector` (tests pass fakes)."""
    collector = Collector(settings or Settings(), **kwargs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await collector.start()
        try:
            yield
        finally:
            await collector.stop()

    app = FastAPI(
        title="reelpulse collector",
        version="1",
        description="The HTTP front door for devices: batches of JSON events, validated against "
        "their Avro schemas and produced to Kafka. See collector/README.md.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.collector = collector
    app.add_api_route(
        "/v1/events",
        collector.post_events,
        methods=["POST"],
        summary="Send a batch of events",
        responses=wire.EVENTS_RESPONSES,
        openapi_extra=_events_request(collector.contract),
        response_class=Response,
    )
    health: dict[int | str, dict[str, Any]] = {200: {"model": wire.Health}, 503: {"model": wire.Health}}
    app.add_api_route("/healthz", collector.healthz, methods=["GET"], responses=health, summary="Alive")
    app.add_api_route(
        "/readyz", collector.readyz, methods=["GET"], responses=health, summary="Kafka and registry reachable"
    )
    app.add_api_route("/metrics", collector.metrics_page, methods=["GET"], summary="Prometheus metrics")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """uvicorn's factory (``collector.app:app_from_environment``): settings from REELPULSE_*."""
    return create_app(Settings())


def _events_request(contract: Contract) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/BatchIn"}}},
            "description": "Gzip accepted (Content-Encoding: gzip). Event types: "
            + ", ".join(sorted(e.name for e in contract if e.name not in INTERNAL_TYPES)),
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request models (which no route parses) and the key schemes."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    batch = wire.BatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(batch.pop("$defs", {}))
    schemas["BatchIn"] = batch
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    app.openapi_schema = document
    return document
