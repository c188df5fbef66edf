"""The contract loaded from schemas/: parsing, validation, wire format, keys, topics."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from reelpulse.contract import TOPICS, Contract, decode, encode, split_wire
from reelpulse.errors import SchemaViolation, WireFormatError
from reelpulse.settings import Settings
from reelpulse.testing import plain

CONTRACT = Contract(Settings().schemas_dir)
NOW_MS = 1_795_000_000_000


def envelope() -> dict:
    return {
        "event_id": str(uuid.UUID(int=1)),
        "event_time": NOW_MS,
        "user_id": "u1",
        "profile_id": "u1-p1",
        "session_id": str(uuid.UUID(int=2)),
        "device": {"device_id": "d1", "device_type": "TV", "os": "Tizen 8", "app_version": "9.1.0"},
        "country": "DE",
        "client_ip": "203.0.113.7",
    }


def heartbeat(**changes: object) -> dict:
    record = {
        "envelope": envelope(),
        "title_id": "t1",
        "position_ms": 60_000,
        "interval_ms": 10_000,
        "bitrate_kbps": 4300,
        "resolution": "P1080",
        "buffer_ms": 24_000,
        "rebuffer_count": 1,
        "rebuffer_ms": 800,
        "dropped_frames": 3,
        "cdn_edge": "edge-fra-01",
    }
    return {**record, **changes}


def test_every_event_schema_loads_with_shared_types_inlined() -> None:
    assert len(CONTRACT.events) == 17
    for event in CONTRACT:
        assert event.parsed
        assert "reelpulse.common.Envelope" not in event.schema_json or '"fields"' in event.schema_json
    assert CONTRACT["login"].full_name == "reelpulse.events.Login"
    assert CONTRACT.by_full_name["reelpulse.events.Login"] is CONTRACT["login"]


def test_every_topic_named_by_a_schema_has_a_spec() -> None:
    assert {event.topic for event in CONTRACT} <= set(TOPICS)
    assert TOPICS["reelpulse.catalog"].config()["cleanup.policy"] == "compact"
    assert "retention.ms" in TOPICS["reelpulse.playback"].config()


def test_unknown_event_type_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"known: .*playback_start"):
        CONTRACT["playback_started"]


def test_wire_format_round_trip_keeps_every_field() -> None:
    event = CONTRACT["playback_heartbeat"]
    value = encode(42, event.parsed, heartbeat())
    assert value[0] == 0
    assert int.from_bytes(value[1:5], "big") == 42
    decoded = decode(value, event.parsed)
    assert decoded["envelope"]["event_time"] == dt.datetime.fromtimestamp(NOW_MS / 1000, dt.UTC)
    assert decoded["envelope"]["event_id"] == uuid.UUID(int=1)
    assert plain(decoded) == heartbeat()


def test_newer_writer_is_read_with_an_older_reader_schema() -> None:
    old = CONTRACT["rating"]
    newer = {
        **old.schema,
        "fields": [
            *old.schema["fields"],
            {"name": "mood", "type": ["null", "string"], "default": None, "doc": "d"},
        ],
    }
    import fastavro

    record = {"envelope": envelope(), "title_id": "t9", "rating": 4.5, "source": "APP", "mood": "happy"}
    value = encode(7, fastavro.parse_schema(newer), record)
    assert "mood" not in decode(value, fastavro.parse_schema(newer), old.parsed)


@pytest.mark.parametrize(
    ("value", "message"),
    [(b"\x00\x01", "shorter than the 5-byte header"), (b"\x07\x00\x00\x00\x01abc", "magic byte is 7")],
)
def test_bytes_not_in_wire_format_are_named(value: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        split_wire(value)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (heartbeat(bitrate_kbps=2.5), "bitrate_kbps"),
        (heartbeat(resolution="P999"), "resolution"),
        ({k: v for k, v in heartbeat().items() if k != "cdn_edge"}, "cdn_edge"),
        (
            heartbeat(envelope={**envelope(), "device": {**envelope()["device"], "device_type": "FRIDGE"}}),
            "envelope.device.device_type",
        ),
        (heartbeat(bitrate_kbps=2**40), "bitrate_kbps"),
        (heartbeat(colour="blue"), "colour"),
        (
            heartbeat(envelope={**envelope(), "device": {**envelope()["device"], "ram": 4}}),
            "envelope.device.ram",
        ),
    ],
)
def test_an_invalid_event_names_its_type_and_field(record: dict, field: str) -> None:
    with pytest.raises(SchemaViolation) as raised:
        CONTRACT["playback_heartbeat"].check(record)
    assert (raised.value.event_type, raised.value.field) == ("playback_heartbeat", field)
    assert f"playback_heartbeat event: field '{field}'" in str(raised.value)


def test_keys_follow_the_ordering_rule() -> None:
    record = heartbeat()
    assert CONTRACT["playback_heartbeat"].key_of(record) == record["envelope"]["session_id"]
    assert CONTRACT["login"].key_path == ("envelope", "user_id")
    assert CONTRACT["cdn_request"].key_path == ("edge_id",)


def test_personal_fields_are_marked() -> None:
    assert set(CONTRACT["search"].pii_fields) >= {"envelope.client_ip", "envelope.user_id", "query"}
    assert CONTRACT["title"].pii_fields == ()
