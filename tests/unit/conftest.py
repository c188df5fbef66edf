"""Fixtures of the unit tests that run Spark: a temp lake per module (the session is
``spark`` in tests/conftest.py)."""

from __future__ import annotations

import pytest

from reelpulse.settings import Settings


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of a fresh, empty lake for one test module."""
    lake = tmp_path_factory.mktemp("lake")
    return Settings(lake_dir=str(lake), spark_master="local[2]", spark_shuffle_partitions=2)
