"""One typed settings object: environment, code arguments, secrets, clear failures."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reelpulse.settings import Settings


def test_environment_configures_and_code_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELPULSE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    monkeypatch.setenv("REELPULSE_TOPIC_PARTITIONS", "6")
    assert Settings().kafka_bootstrap_servers == "127.0.0.1:19092"
    assert Settings().topic_partitions == 6
    assert Settings(topic_partitions=2).topic_partitions == 2


def test_remote_cluster_with_sasl_and_a_secret_that_never_prints() -> None:
    settings = Settings(
        kafka_bootstrap_servers="b1.example:9093,b2.example:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="s3cret",
        schema_registry_url="https://registry.example/apis/ccompat/v7",
        schema_registry_username="reader",
        schema_registry_password="pw",
    )
    config = settings.kafka_client_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.password"] == "s3cret"
    assert settings.schema_registry_config()["basic.auth.user.info"] == "reader:pw"
    assert "s3cret" not in repr(settings)
    assert "pw'" not in repr(settings)


def test_local_stack_refuses_a_remote_bootstrap_address() -> None:
    settings = Settings(kafka_bootstrap_servers="kafka.prod.example:9092")
    with pytest.raises(ValueError, match="REELPULSE_KAFKA_BOOTSTRAP_SERVERS"):
        settings.local_kafka_port()
    assert Settings().local_kafka_port() == 9092
    assert Settings().local_registry_port() == 8081


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("schema_registry_url", "registry:8081", "REELPULSE_SCHEMA_REGISTRY_URL"),
        ("kafka_bootstrap_servers", "  ", "REELPULSE_KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_bad_values_fail_at_start_naming_the_variable(field: str, value: str, variable: str) -> None:
    with pytest.raises(ValidationError, match=variable):
        Settings(**{field: value})
