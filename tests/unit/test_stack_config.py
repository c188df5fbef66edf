"""Pure parts of the local stack: broker configuration and cluster ids."""

from __future__ import annotations

from pathlib import Path

from reelpulse import stack
from reelpulse.settings import Settings


def test_cluster_ids_never_look_like_an_option() -> None:
    ids = [stack.new_cluster_id() for _ in range(5000)]
    assert all(len(cluster_id) == 22 and not cluster_id.startswith("-") for cluster_id in ids)
    assert len(set(ids)) == len(ids)


def test_broker_properties_follow_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:19092", kafka_controller_port=19093
    )
    properties = dict(line.split("=", 1) for line in stack.kafka_properties(settings).splitlines())
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert properties["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert properties["auto.create.topics.enable"] == "false"


def test_every_service_command_carries_the_state_dir_identity(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, jar_cache=tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "registry").mkdir(parents=True)
    (tmp_path / "elsewhere" / "registry" / "apicurio-registry-app-3.0.9-runner.jar").touch()
    for service in stack.SERVICES:
        assert f"-Dreelpulse.state_dir={tmp_path.resolve()}" in service.command(settings)


def test_setup_gives_a_local_lake_one_pseudonymization_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(stack.PSEUDONYMIZATION_KEY_VARIABLE, raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("REELPULSE_SPARK_MASTER=local[2]\n")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert stack.ensure_pseudonymization_key(settings, env_file)
    assert not stack.ensure_pseudonymization_key(settings, env_file)  # never a second key
    read = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert len(read.pseudonymization_key()) == 64
    assert read.spark_master == "local[2]"
    assert env_file.read_text().count(stack.PSEUDONYMIZATION_KEY_VARIABLE) == 1


def test_a_configured_pseudonymization_key_is_left_alone(tmp_path: Path) -> None:
    settings = Settings(silver_pseudonymization_key="k" * 32)  # type: ignore[arg-type]
    assert not stack.ensure_pseudonymization_key(settings, tmp_path / ".env")
    assert not (tmp_path / ".env").exists()
