"""The registry holds the contract and enforces BACKWARD_TRANSITIVE compatibility."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from reelpulse import registry
from reelpulse.contract import Contract
from reelpulse.settings import Settings


def scratch_subject(name: str) -> str:
    return f"test-{uuid.uuid4().hex[:8]}-{name}"


def with_field(schema_json: str, field: dict) -> Schema:
    schema = json.loads(schema_json)
    schema["fields"].append(field)
    return Schema(json.dumps(schema), "AVRO")


def test_every_subject_is_registered_backward_transitive(
    settings: Settings, contract: Contract, schema_ids: dict[str, int]
) -> None:
    client = registry.client(settings)
    for event in contract:
        assert client.get_compatibility(event.subject) == registry.COMPATIBILITY
        registered = client.get_latest_version(event.subject)
        assert registered.schema_id == schema_ids[event.name]
        assert json.loads(registered.schema.schema_str) == json.loads(event.schema_json)


def test_registry_refuses_an_incompatible_change_and_takes_a_compatible_one(
    settings: Settings, contract: Contract
) -> None:
    client, rating = registry.client(settings), contract["rating"]
    subject = scratch_subject("rating")
    client.set_compatibility(subject, registry.COMPATIBILITY)
    client.register_schema(subject, registry.avro(rating))
    required = {"name": "mood", "type": "string", "doc": "new required field"}
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, with_field(rating.schema_json, required))
    assert refused.value.http_status_code == 409
    optional = {"name": "mood", "type": ["null", "string"], "default": None, "doc": "optional"}
    client.register_schema(subject, with_field(rating.schema_json, optional))
    assert len(client.get_versions(subject)) == 2


def test_current_schemas_are_compatible_with_their_released_versions(
    settings: Settings, contract: Contract
) -> None:
    assert set(registry.released_schemas(contract)) == {event.subject for event in contract}
    results = registry.check_against_released(settings, contract)
    assert [r.subject for r in results if not r.compatible] == []
    assert {r.detail for r in results} == {"compatible"}
    leftovers = [s for s in registry.client(settings).get_subjects() if "release-check" in s]
    assert leftovers == []


def test_a_breaking_edit_fails_the_release_check(settings: Settings, contract: Contract, tmp_path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(contract.schemas_dir, schemas)
    rating = json.loads((schemas / "rating.avsc").read_text())
    rating["fields"] = [f for f in rating["fields"] if f["name"] != "source"]
    rating["fields"].append({"name": "stars", "type": "int", "doc": "replaces rating, no default"})
    (schemas / "rating.avsc").write_text(json.dumps(rating))
    results = registry.check_against_released(settings, Contract(schemas))
    assert [r.subject for r in results if not r.compatible] == [contract["rating"].subject]


def test_schemas_check_command_passes_against_the_released_versions(
    settings: Settings, schema_ids: dict
) -> None:
    env = {
        **os.environ,
        "REELPULSE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "REELPULSE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
    }
    result = subprocess.run(
        [sys.executable, "-m", "reelpulse", "schemas", "check", "--against", "released"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "breaks" not in result.stdout
