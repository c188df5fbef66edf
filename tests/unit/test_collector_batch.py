"""From request bytes to per-event outcomes, without services: body limits, gzip, JSON
shape, event types, schema violations naming the field, clock skew, dead letters."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest

from collector.batch import (
    ACCEPTED,
    NOT_ACCEPTED,
    REJECTED,
    BodyError,
    Rejection,
    Validator,
    parse_batch,
    read_body,
    request_headers,
)
from collector.testing import device_events, fake_schema_ids
from reelpulse.contract import Contract, decode, split_wire
from reelpulse.settings import Settings
from reelpulse.testing import plain

CONTRACT = Contract(Settings().schemas_dir)
IDS = fake_schema_ids(CONTRACT)
NOW_MS = 1_795_000_000_000
EVENTS = device_events(200, seed=8, now_ms=NOW_MS)
VALIDATOR = Validator(CONTRACT, IDS, clock_skew_s=86_400)
HEARTBEAT = next(r for n, r in EVENTS if n == "playback_heartbeat")


def item(name: str = "playback_heartbeat", **changes: Any) -> dict[str, Any]:
    record = HEARTBEAT if name == "playback_heartbeat" else next(r for n, r in EVENTS if n == name)
    return {"type": name, "event": {**record, **changes}}


def dead_letter(value: bytes) -> dict[str, Any]:
    event = CONTRACT["dead_letter"]
    assert split_wire(value)[0] == IDS["dead_letter"]
    record = plain(decode(value, event.parsed))
    event.check(record)
    return dict(record)


# --------------------------------------------------------------------------- body


def test_a_body_over_the_limit_is_refused_before_and_after_gzip() -> None:
    with pytest.raises(BodyError) as raw:
        read_body(b"x" * 101, None, limit=100)
    assert (raw.value.status, raw.value.error_type, raw.value.dead_letter) == (413, "body_too_large", False)
    bomb = gzip.compress(b" " * 10_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(BodyError, match="once decompressed") as inflated:
        read_body(bomb, "gzip", limit=100_000)
    assert inflated.value.status == 413


def test_gzip_is_accepted_and_other_encodings_are_not() -> None:
    body = b'{"events": []}'
    assert read_body(gzip.compress(body), "gzip", 1000) == body
    assert read_body(body, None, 1000) == read_body(body, "identity", 1000) == body
    with pytest.raises(BodyError) as error:
        read_body(body, "br", 1000)
    assert error.value.status == 415


@pytest.mark.parametrize("raw", [b"not gzip", gzip.compress(b"{}")[:-4], gzip.compress(b"{}") + b"junk"])
def test_broken_gzip_is_a_kept_400(raw: bytes) -> None:
    with pytest.raises(BodyError) as error:
        read_body(raw, "gzip", 1000)
    assert (error.value.status, error.value.error_type, error.value.dead_letter) == (
        400,
        "malformed_gzip",
        True,
    )


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        (b"{nope", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b'{"events": NaN}', 400, "malformed_json"),
        (b"[]", 400, "malformed_batch"),
        (b'{"events": {}}', 400, "malformed_batch"),
        (b'{"events": [], "more": 1}', 400, "malformed_batch"),
        (b'{"events": []}', 400, "empty_batch"),
        (orjson.dumps({"events": [{}] * 11}), 413, "batch_too_large"),
    ],
)
def test_bodies_that_are_not_a_batch(body: bytes, status: int, error_type: str) -> None:
    with pytest.raises(BodyError) as error:
        parse_batch(body, max_events=10)
    assert (error.value.status, error.value.error_type) == (status, error_type)


# --------------------------------------------------------------------------- events


def test_a_valid_event_becomes_its_record_keyed_as_the_contract_says() -> None:
    for name, record in EVENTS:
        outcome = VALIDATOR.outcome({"type": name, "event": record}, NOW_MS)
        event = CONTRACT[name]
        assert outcome.rejection is None, outcome.rejection
        assert outcome.record.topic == event.topic
        assert outcome.record.key == event.key_of(record).encode()
        assert split_wire(outcome.record.value)[0] == IDS[name]
        assert plain(decode(outcome.record.value, event.parsed)) == record
        assert outcome.result() == {"status": ACCEPTED, "event_id": outcome.event_id}
    assert VALIDATOR.outcome(item(), NOW_MS).event_id == HEARTBEAT["envelope"]["event_id"]


@pytest.mark.parametrize(
    ("sent", "error_type", "field", "reason"),
    [
        ("a string", "malformed_event", None, "each event must be"),
        ({"type": "playback_heartbeat"}, "malformed_event", "event", "event must be an object"),
        ({"type": "playback_heartbeat", "event": [1]}, "malformed_event", "event", "must be an object"),
        ({"type": 7, "event": {}}, "malformed_event", "type", "type must be a string"),
        ({**item(), "extra": 1}, "malformed_event", None, "unknown key 'extra'"),
        ({"type": "nope", "event": {}}, "unknown_event_type", "type", "unknown event type 'nope'"),
        ({"type": "title", "event": {}}, "unknown_event_type", "type", "accepted: bitrate_switch"),
        ({"type": "dead_letter", "event": {}}, "unknown_event_type", "type", "unknown event type"),
        (item(bitrate_kbps=2.5), "schema_violation", "bitrate_kbps", "does not match type int"),
        (item(resolution="P9000"), "schema_violation", "resolution", "'P9000'"),
        (item(surprise=1), "schema_violation", "surprise", "is not a field of the schema"),
        (
            item(envelope={**HEARTBEAT["envelope"], "country": None}),
            "schema_violation",
            "envelope.country",
            "does not match type string",
        ),
        (
            {"type": "playback_heartbeat", "event": {k: v for k, v in HEARTBEAT.items() if k != "title_id"}},
            "schema_violation",
            "title_id",
            "is required but missing",
        ),
    ],
)
def test_each_kind_of_bad_event_is_rejected_naming_the_field(
    sent: Any, error_type: str, field: str | None, reason: str
) -> None:
    outcome = VALIDATOR.outcome(sent, NOW_MS, request_headers("tv-app", "curl/8"))
    assert outcome.rejection is not None
    assert (outcome.rejection.error_type, outcome.rejection.field) == (error_type, field)
    assert reason in outcome.rejection.reason
    result = outcome.result()
    assert (result["status"], result["error_type"], result["field"]) == (REJECTED, error_type, field)
    assert outcome.record.topic == "reelpulse.deadletter"
    assert outcome.record.key == b"collector"
    letter = dead_letter(outcome.record.value)
    assert letter["stage"] == "collector"
    assert (letter["error_type"], letter["reason"]) == (error_type, outcome.rejection.reason)
    assert orjson.loads(letter["original_value"]) == sent
    assert letter["source_topic"] is None
    assert letter["failed_at"] == NOW_MS
    assert {h["key"]: h["value"] for h in letter["headers"]} == {
        "collector.client": b"tv-app",
        "user-agent": b"curl/8",
    }


@pytest.mark.parametrize("offset_h", [-25, 25])
def test_an_event_far_from_the_clock_is_rejected_as_clock_skew(offset_h: int) -> None:
    envelope = {**HEARTBEAT["envelope"], "event_time": NOW_MS + offset_h * 3_600_000}
    outcome = VALIDATOR.outcome(item(envelope=envelope), NOW_MS)
    assert outcome.rejection is not None
    assert (outcome.rejection.error_type, outcome.rejection.field) == ("clock_skew", "envelope.event_time")
    assert ("ahead of" if offset_h > 0 else "behind") in outcome.rejection.reason
    near = {**HEARTBEAT["envelope"], "event_time": NOW_MS + offset_h * 3_300_000}
    assert VALIDATOR.outcome(item(envelope=near), NOW_MS).rejection is None


def test_cdn_logs_carry_their_time_at_the_top() -> None:
    record = next(r for n, r in EVENTS if n == "cdn_request")
    outcome = VALIDATOR.outcome({"type": "cdn_request", "event": {**record, "event_time": 0}}, NOW_MS)
    assert outcome.rejection is not None
    assert outcome.rejection.field == "event_time"
    assert outcome.event_id == record["event_id"]


def test_an_unacknowledged_event_is_reported_not_accepted() -> None:
    outcome = VALIDATOR.outcome(item(), NOW_MS)
    assert outcome.result(delivered=False)["status"] == NOT_ACCEPTED
    assert "same event_id" in outcome.result(delivered=False)["reason"]


def test_a_whole_body_dead_letter_keeps_the_raw_bytes() -> None:
    record = VALIDATOR.dead_letter(Rejection("malformed_json", "body is not valid JSON"), b"{nope", NOW_MS)
    letter = dead_letter(record.value)
    assert (letter["original_value"], letter["error_type"], letter["headers"]) == (
        b"{nope",
        "malformed_json",
        [],
    )
