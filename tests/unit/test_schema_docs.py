"""The contract's own rules and its documentation: ``schemas/README.md`` is what
``reelpulse schemas docs`` renders today, every field is documented, every event names a
known topic and a string key, and identifying fields are marked as personal data."""

from __future__ import annotations

from typing import Any

import pytest

from reelpulse.contract import (
    KEY_PROPERTY,
    TOPIC_PROPERTY,
    TOPICS,
    Contract,
    EventType,
    walk_fields,
)
from reelpulse.docs import README, field_rows, render_schemas_readme
from reelpulse.settings import Settings

CONTRACT = Contract(Settings(_env_file=None).schemas_dir)
EVENTS = list(CONTRACT)
IDS = [e.name for e in EVENTS]
PII_NAMES = frozenset({"user_id", "profile_id", "device_id"})


def test_readme_is_not_stale() -> None:
    committed = (CONTRACT.schemas_dir / README).read_text(encoding="utf-8")
    rendered = render_schemas_readme(CONTRACT)
    assert committed == rendered, "schemas/README.md is stale: run `reelpulse schemas docs`"


def test_readme_names_every_event_type_and_topic() -> None:
    page = render_schemas_readme(CONTRACT)
    for event in CONTRACT:
        assert f"\n### {event.name}\n" in page
        assert f"`{event.full_name}`" in page
        assert f"`{event.subject}`" in page
    for topic in CONTRACT.topics():
        assert f"| `{topic.name}` |" in page
    assert {t.name for t in CONTRACT.topics()} == {e.topic for e in CONTRACT}


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_every_field_is_documented(event: EventType) -> None:
    assert event.doc.strip(), f"{event.name} has no record doc"
    undocumented = [p for p, f in walk_fields(event.schema) if not str(f.get("doc", "")).strip()]
    undocumented += [row.path for row in field_rows(event) if not row.doc.strip()]
    assert not undocumented, f"{event.name}: fields without a doc: {sorted(set(undocumented))}"


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_field_table_covers_every_walked_field(event: EventType) -> None:
    rows = {row.path for row in field_rows(event)}
    assert {path for path, _ in walk_fields(event.resolved)} == rows


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_topic_is_a_known_topic(event: EventType) -> None:
    assert event.schema.get(TOPIC_PROPERTY) in TOPICS, f"{event.name}: unknown topic"


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_key_is_a_string_field(event: EventType) -> None:
    key = event.schema.get(KEY_PROPERTY)
    fields = dict(walk_fields(event.resolved))
    assert key in fields, f"{event.name}: key {key!r} is not a field"
    assert _is_string(fields[key]["type"]), f"{event.name}: key {key!r} is not a string field"


def _is_string(avro_type: Any) -> bool:
    return avro_type == "string" or (isinstance(avro_type, dict) and avro_type["type"] == "string")


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_identifying_fields_are_marked_pii(event: EventType) -> None:
    unmarked = [
        row.path
        for row in field_rows(event)
        if _looks_identifying(row.path.rpartition(".")[2]) and not row.pii
    ]
    assert not unmarked, f'{event.name}: mark these fields "pii": true: {unmarked}'


def _looks_identifying(name: str) -> bool:
    return name in PII_NAMES or name.endswith("_ip")
