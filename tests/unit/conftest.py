"""Fixtures of the unit tests that run Spark: one local session for the whole test run
(starting a JVM per module costs seconds each), and a temp lake per module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from reelpulse.settings import Settings


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of a fresh, empty lake for one test module."""
    lake = tmp_path_factory.mktemp("lake")
    return Settings(lake_dir=str(lake), spark_master="local[2]", spark_shuffle_partitions=2)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Local Spark with Delta, UI off, two shuffle partitions (as delta's own test utils)."""
    from batch import spark as spark_support

    settings = Settings(
        lake_dir=str(tmp_path_factory.mktemp("spark")), spark_master="local[2]", spark_shuffle_partitions=2
    )
    session = spark_support.session(settings, "reelpulse-unit")
    session.conf.set("spark.databricks.delta.snapshotPartitions", "2")
    yield session
    session.stop()
