"""Shared test configuration: every test under tests/unit is marked ``unit`` and every
test under tests/integration ``integration``, so ``-m unit`` runs without services."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if tier in {"unit", "integration"}:
            item.add_marker(getattr(pytest.mark, tier))
