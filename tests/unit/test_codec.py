"""The generated validate-and-encode fast path agrees with the contract: it writes
fastavro's bytes for every valid event and accepts nothing the contract refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.testing import device_events
from reelpulse.codec import compile_codec, encode_checked, zigzag
from reelpulse.contract import Contract, EventType, encode
from reelpulse.errors import SchemaViolation
from reelpulse.settings import Settings

CONTRACT = Contract(Settings().schemas_dir)
CODECS = {event.name: compile_codec(event, 42) for event in CONTRACT}
EVENTS = device_events(400, seed=21, now_ms=1_795_000_000_000)
SYMBOLS = ["TV", "P1080", "HIT", "MOBILE", "ACCOUNT", "OTHER", ""]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(SYMBOLS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def contract_verdict(event: EventType, record: Any) -> bytes | None:
    """fastavro's bytes if the contract accepts ``record``, else None."""
    try:
        return encode_checked(event, 42, record)
    except (SchemaViolation, ValueError, TypeError, OverflowError):
        return None


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, b"\x00"),
        (-1, b"\x01"),
        (1, b"\x02"),
        (63, b"\x7e"),
        (64, b"\x80\x01"),
        (-(2**63), b"\xff" * 9 + b"\x01"),
    ],
)
def test_zigzag_is_avros_varint(n: int, expected: bytes) -> None:
    assert zigzag(n) == expected


def test_every_event_type_of_the_contract_gets_a_codec() -> None:
    assert {name for name, codec in CODECS.items() if codec is None} == set()


def test_valid_events_encode_to_fastavros_bytes() -> None:
    assert len({name for name, _ in EVENTS}) >= 10
    for name, record in EVENTS:
        assert CODECS[name](record) == encode(42, CONTRACT[name].parsed, record), name


def test_optional_fields_left_out_take_their_defaults() -> None:
    name, record = next((n, r) for n, r in EVENTS if n == "search")
    trimmed = {k: v for k, v in record.items() if k not in ("clicked_title_id", "clicked_rank")}
    assert CODECS[name](trimmed) == encode(42, CONTRACT[name].parsed, trimmed)


@pytest.mark.parametrize(
    "change",
    [
        {"bitrate_kbps": 2.5},
        {"bitrate_kbps": True},
        {"bitrate_kbps": 2**31},
        {"resolution": "P9000"},
        {"title_id": None},
        {"surprise": 1},
    ],
)
def test_invalid_heartbeats_take_the_contracts_path(change: dict[str, Any]) -> None:
    record = {**next(r for n, r in EVENTS if n == "playback_heartbeat"), **change}
    assert CODECS["playback_heartbeat"](record) is None
    assert contract_verdict(CONTRACT["playback_heartbeat"], record) is None


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value: dict keys and list indexes, nested."""
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, inner in items:
        found.extend(paths(inner, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Any]:
    """A simulator event with one place replaced, removed, or given an extra key."""
    name, record = draw(st.sampled_from(EVENTS))
    record = copy.deepcopy(record)
    path = draw(st.sampled_from(paths(record)))
    parent = record
    for part in path[:-1]:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(json_values)
    elif action == "remove" and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent[path[-1]], dict):
        parent[path[-1]][draw(st.text(max_size=6))] = draw(json_values)
    return name, record


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fast_path_never_accepts_what_the_contract_refuses(case: tuple[str, Any]) -> None:
    name, record = case
    fast = CODECS[name](record)
    if fast is not None:
        assert fast == contract_verdict(CONTRACT[name], record)
