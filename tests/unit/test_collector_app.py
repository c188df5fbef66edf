"""The collector's HTTP surface with an in-memory Kafka: status codes and reasons for
every kind of request, what reaches the topics, 503 when nothing is acknowledged,
probes, metrics, the OpenAPI document, and a fuzz run that never sees a 5xx."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.app import create_app
from collector.keys import KeyStore
from collector.testing import MemorySink, batch, device_events, fake_schema_ids, json_values, key_file
from reelpulse.contract import Contract
from reelpulse.settings import Settings
from reelpulse.testing import free_port

SETTINGS = Settings(
    collector_max_body_bytes=200_000,
    collector_max_batch_events=200,
    collector_rate_limit_events_per_s=1000,
    collector_rate_limit_burst=1000,
    schema_registry_url=f"http://127.0.0.1:{free_port()}/apis/ccompat/v7",  # nothing listens
)
CONTRACT = Contract(SETTINGS.schemas_dir)
EVENTS = device_events(300, seed=13)


class Service:
    """A running app, its sink and a valid key."""

    def __init__(self, client: TestClient, sink: MemorySink, key: str) -> None:
        self.client, self.sink, self.key = client, sink, key

    def post(self, body: Any = None, *, raw: bytes | None = None, **headers: str) -> Any:
        sent = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json", **headers}
        content = raw if raw is not None else orjson.dumps(body)
        return self.client.post("/v1/events", content=content, headers={k: v for k, v in sent.items() if v})


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    path, key = key_file(tmp_path)
    sink = MemorySink()
    app = create_app(
        SETTINGS, contract=CONTRACT, schema_ids=fake_schema_ids(CONTRACT), sink=sink, keys=KeyStore(path)
    )
    with TestClient(app) as client:
        yield Service(client, sink, key)
    assert sink.stopped


def test_a_valid_batch_is_accepted_and_produced(service: Service) -> None:
    response = service.post(batch(EVENTS[:100]))
    assert response.status_code == 200
    answer = response.json()
    assert (answer["accepted"], answer["rejected"], answer["not_accepted"]) == (100, 0, 0)
    assert [r["event_id"] for r in answer["results"]] == [
        r.get("envelope", r)["event_id"] for _, r in EVENTS[:100]
    ]
    assert len(service.sink.records) == 100
    assert not service.sink.on("reelpulse.deadletter")


def test_gzip_and_x_api_key_work_too(service: Service) -> None:
    body = gzip.compress(orjson.dumps(batch(EVENTS[:50])))
    response = service.post(
        raw=body, **{"Content-Encoding": "gzip", "Authorization": "", "X-API-Key": service.key}
    )
    assert response.status_code == 200
    assert response.json()["accepted"] == 50


def test_a_mixed_batch_is_207_and_an_all_bad_one_422(service: Service) -> None:
    body = batch(EVENTS[:3])
    body["events"][1]["event"] = {**body["events"][1]["event"], "surprise": 1}
    mixed = service.post(body)
    assert mixed.status_code == 207
    assert [r["status"] for r in mixed.json()["results"]] == ["accepted", "rejected", "accepted"]
    assert mixed.json()["results"][1]["field"] == "surprise"
    bad = service.post({"events": [{"type": "nope", "event": {}}]})
    assert bad.status_code == 422
    assert bad.json()["results"][0]["error_type"] == "unknown_event_type"
    assert len(service.sink.on("reelpulse.deadletter")) == 2
    assert len(service.sink.records) == 4


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({"Authorization": ""}, 401, "unauthorized"),
        ({"Authorization": "Bearer rp_000000000000_wrong"}, 401, "unauthorized"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401, "unauthorized"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": ""}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/json; charset=latin-1"}, 415, "unsupported_media_type"),
        ({"Content-Encoding": "br"}, 415, "unsupported_encoding"),
    ],
)
def test_requests_refused_at_the_door_leave_no_trace(
    service: Service, headers: dict[str, str], status: int, error: str
) -> None:
    response = service.post(batch(EVENTS[:5]), **headers)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert service.sink.records == []


def test_unauthorized_says_how_to_authenticate(service: Service) -> None:
    response = service.post(batch(EVENTS[:1]), Authorization="")
    assert response.headers["www-authenticate"] == "Bearer"


def test_oversize_bodies_are_413_without_a_dead_letter(service: Service) -> None:
    big = b'{"events": [' + b" " * 200_001 + b"]}"
    assert service.post(raw=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(30):
            yield b" " * 10_000

    response = service.client.post(
        "/v1/events",
        content=chunks(),
        headers={"Authorization": f"Bearer {service.key}", "Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["error"]) == (413, "body_too_large")
    too_many = service.post(batch(EVENTS[:201]))
    assert (too_many.status_code, too_many.json()["error"]) == (413, "batch_too_large")
    assert service.sink.records == []


def test_malformed_json_is_400_and_kept_as_one_dead_letter(service: Service) -> None:
    response = service.post(raw=b'{"events": [{"type": "login", "event": {')
    assert (response.status_code, response.json()["error"]) == (400, "malformed_json")
    (letter,) = service.sink.records
    assert letter.topic == "reelpulse.deadletter"
    assert b'{"events": [{"type": "login", "event": {' in letter.value


def test_too_fast_is_429_with_retry_after_and_nothing_produced(service: Service) -> None:
    for _ in range(5):  # the whole burst
        assert service.post(batch(EVENTS[:200])).status_code == 200
    produced = len(service.sink.records)
    response = service.post(batch(EVENTS[:200]))
    assert (response.status_code, response.json()["error"]) == (429, "rate_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 1
    assert len(service.sink.records) == produced


def test_kafka_down_is_503_with_retry_after_and_nothing_accepted(service: Service) -> None:
    service.sink.down = True
    response = service.post(batch(EVENTS[:10]))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    answer = response.json()
    assert (answer["accepted"], answer["not_accepted"]) == (0, 10)
    assert {r["status"] for r in answer["results"]} == {"not_accepted"}
    malformed = service.post(raw=b"{")
    assert malformed.status_code == 503
    assert service.client.get("/readyz").status_code == 503


def test_probes_metrics_and_openapi(service: Service) -> None:
    assert service.client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = service.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["kafka"] == "ok"
    assert "not reachable" in ready.json()["checks"]["registry"]
    service.post(batch(EVENTS[:20]))
    service.post({"events": [{"type": "nope", "event": {}}]})
    metrics = service.client.get("/metrics").text
    accepted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("reelpulse_collector_events_accepted_total{")
    )
    assert accepted == 20
    assert 'reelpulse_collector_events_rejected_total{error_type="unknown_event_type"} 1.0' in metrics
    assert 'reelpulse_collector_requests_total{status="422"} 1.0' in metrics
    assert "reelpulse_collector_request_seconds_bucket" in metrics
    document = service.client.get("/openapi.json").json()
    operation = document["paths"]["/v1/events"]["post"]
    assert {"200", "207", "400", "401", "413", "415", "422", "429", "503"} <= set(operation["responses"])
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("BatchIn")
    assert {"BatchIn", "EventIn", "BatchResult", "ErrorBody"} <= set(document["components"]["schemas"])


def test_a_burst_smaller_than_a_batch_is_refused_at_start() -> None:
    from collector.errors import CollectorError

    with pytest.raises(CollectorError, match="REELPULSE_COLLECTOR_RATE_LIMIT_BURST"):
        create_app(Settings(collector_max_batch_events=100, collector_rate_limit_burst=10), sink=MemorySink())


# --------------------------------------------------------------------------- fuzz

JSON_VALUES = json_values(max_leaves=12)
event_types = st.sampled_from([*{n for n, _ in EVENTS}, "title", "nope"]) | st.text(max_size=5)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Raw bytes, any JSON, batches of junk items, or real events with a field changed."""
    kind = draw(st.sampled_from(["bytes", "json", "items", "events"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return orjson.dumps(draw(JSON_VALUES), option=orjson.OPT_NON_STR_KEYS)
    if kind == "items":
        items = draw(st.lists(st.fixed_dictionaries({"type": event_types, "event": JSON_VALUES}), max_size=5))
        return orjson.dumps({"events": items})
    events = [
        dict(e) for e in draw(st.lists(st.sampled_from(batch(EVENTS)["events"]), min_size=1, max_size=5))
    ]
    index = draw(st.integers(0, len(events) - 1))
    record = dict(events[index]["event"])
    record[draw(st.sampled_from([*record, "extra"]))] = draw(JSON_VALUES)
    events[index] = {**events[index], "event": record}
    return orjson.dumps({"events": events})


headers_strategy = st.fixed_dictionaries(
    {
        "Content-Type": st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "text/plain", ""]
        ),
        "Content-Encoding": st.sampled_from(["", "gzip", "identity", "deflate"]),
        "Authorization": st.sampled_from(["valid", "", "Bearer nope", "Bearer rp_000000000000_x"]),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies(), headers=headers_strategy, gzipped=st.booleans())
def test_fuzz_never_a_server_error(
    service: Service, body: bytes, headers: dict[str, str], gzipped: bool
) -> None:
    if headers["Authorization"] == "valid":
        headers = {**headers, "Authorization": f"Bearer {service.key}"}
    gzipped = gzipped and headers["Content-Encoding"] == "gzip"
    if gzipped:
        body = gzip.compress(body)
    response = service.post(raw=body, **headers)
    assert response.status_code in {200, 207, 400, 401, 413, 415, 422, 429}, response.text
    answer = response.json()
    if response.status_code in {200, 207, 422}:
        assert len(answer["results"]) == len(
            orjson.loads(gzip.decompress(body) if gzipped else body)["events"]
        )
    else:
        assert answer["error"]
        assert answer["reason"]
