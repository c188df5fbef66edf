"""A real Kafka broker and Apicurio Registry, started once per test session on free
ports with a fresh state directory (the jar cache is shared with the local stack)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reelpulse import registry
from reelpulse.contract import Contract
from reelpulse.settings import Settings
from reelpulse.testing import running_stack


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of a running local stack, provisioned with every topic and schema."""
    with running_stack(tmp_path_factory.mktemp("stack")) as settings:
        yield settings


@pytest.fixture(scope="session")
def contract(settings: Settings) -> Contract:
    return Contract(settings.schemas_dir)


@pytest.fixture(scope="session")
def schema_ids(settings: Settings, contract: Contract) -> dict[str, int]:
    """The ids the stack registered when it started (``running_stack`` provisions it)."""
    return registry.lookup_ids(settings, contract)
