"""Shared test configuration: every test under tests/unit is marked ``unit`` and every
test under tests/integration ``integration``, so ``-m unit`` runs without services; and
one local Spark session for every test that needs one (a JVM per module costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reelpulse.settings import Settings

TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if tier in {"unit", "integration"}:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Local Spark with Delta, UI off, two shuffle partitions (as delta's own test utils).
    Jobs get their lake and services from the settings they are given, not the session."""
    from batch import spark as spark_support

    settings = Settings(
        lake_dir=str(tmp_path_factory.mktemp("spark")), spark_master="local[2]", spark_shuffle_partitions=2
    )
    session = spark_support.session(settings, "reelpulse-tests")
    session.conf.set("spark.databricks.delta.snapshotPartitions", "2")
    yield session
    session.stop()
