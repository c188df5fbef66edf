"""The local stack's lifecycle from an operator's side: up twice is harmless, down
leaves no process, a restart keeps topics, and conflicts produce actionable errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from reelpulse import stack, topics
from reelpulse.contract import TopicSpec
from reelpulse.errors import StackError
from reelpulse.settings import Settings
from reelpulse.testing import stack_settings


def processes_of(state_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(state_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Settings]:
    """A second stack of its own, for lifecycle tests."""
    settings = stack_settings(tmp_path / "state")
    stack.setup(settings)
    try:
        yield settings
    finally:
        stack.down(settings)


def test_start_twice_restart_keeps_topics_and_down_leaves_nothing(own_stack: Settings) -> None:
    pids = stack.up(own_stack)
    assert stack.up(own_stack) == pids
    topics.ensure_topics(own_stack, [TopicSpec("lifecycle.check", 3_600_000)])
    assert stack.down(own_stack) == ["registry", "kafka"]
    assert processes_of(own_stack.state_dir) == []
    assert not stack.KAFKA.pid_file(own_stack).exists()

    stack.start(stack.KAFKA, own_stack)
    names = [state.name for state in topics.topic_states(own_stack, ["lifecycle.check"])]
    assert names == ["lifecycle.check"]


def test_a_taken_port_is_named_with_its_owner(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "state")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.local_kafka_port()))
        squatter.listen()
        with pytest.raises(
            StackError, match=rf"port {settings.local_kafka_port()} for kafka is taken by pid {os.getpid()}"
        ):
            stack.start(stack.KAFKA, settings)
    assert processes_of(settings.state_dir) == []


def test_a_stale_pid_file_is_cleaned_up(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "state")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file = stack.KAFKA.pid_file(settings)
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(str(dead.pid))
    assert stack.running_pid(stack.KAFKA, settings) is None
    assert not pid_file.exists()


def test_status_shows_services_and_topics(settings: Settings, schema_ids: dict) -> None:
    env = {
        **os.environ,
        "REELPULSE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REELPULSE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "REELPULSE_STATE_DIR": str(settings.state_dir),
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-m", "reelpulse", "status"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ready") == 2
    for topic in ("reelpulse.playback", "reelpulse.auth", "reelpulse.deadletter"):
        assert topic in result.stdout
