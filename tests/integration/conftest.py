"""A real Kafka broker and Apicurio Registry, started once per test session on free
ports with a fresh state directory (the jar cache is shared with the local stack)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reelpulse import registry, stack, topics
from reelpulse.contract import Contract
from reelpulse.settings import Settings
from reelpulse.testing import stack_settings


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of a running local stack, provisioned with every topic and schema."""
    settings = stack_settings(tmp_path_factory.mktemp("stack"))
    try:
        stack.up(settings)
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture(scope="session")
def contract(settings: Settings) -> Contract:
    return Contract(settings.schemas_dir)


@pytest.fixture(scope="session")
def schema_ids(settings: Settings, contract: Contract) -> dict[str, int]:
    topics.ensure_topics(settings, contract.topics())
    return registry.register_all(settings, contract)
