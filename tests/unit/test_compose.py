"""docker-compose.yml, checked by parsing it (there is no Docker engine here): pinned
images, health checks, the same host ports as ``Settings`` defaults, registry storage on
the compose broker, no passwords, and only reelpulse's own variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml

from reelpulse.settings import ENV_PREFIX, PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")
COMPOSE_ONLY_VARIABLES = {f"{ENV_PREFIX}KAFKA_PORT", f"{ENV_PREFIX}REGISTRY_PORT"}
SECRET_KEY = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)
SECRET_ASSIGNMENT = re.compile(r"password\s*[=:]\s*[^\s$]", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as they are without any environment or .env file."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    return Settings(_env_file=None)


def interpolate(value: Any, env: dict[str, str] | None = None) -> str:
    """Compose's ``${NAME:-default}`` substitution."""
    env = env or {}
    return VARIABLE.sub(lambda m: env.get(m["name"]) or m["default"] or "", str(value))


def published(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[int, int]:
    """Container port -> host port of every published port; only loopback binds allowed."""
    ports = {}
    for spec in service.get("ports", []):
        host_ip, host_port, container_port = interpolate(spec, env).split(":")
        assert host_ip == "127.0.0.1", f"{spec} is published beyond this machine"
        ports[int(container_port)] = int(host_port)
    return ports


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    result = {}
    for listener in interpolate(value).split(","):
        name, _, address = listener.partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


def dotenv_example() -> list[str]:
    """The ``.env`` lines the header comment shows after "name each port once:"."""
    after = COMPOSE.read_text().split("name each port once:", 1)[1].splitlines()[1:]
    lines = []
    for line in after:
        match = re.fullmatch(rf"#\s+({ENV_PREFIX}[A-Z_]+=\S+)", line)
        if not match:
            break
        lines.append(match[1])
    assert len(lines) == 4, "the header comment no longer shows the .env example"
    return lines


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *strings(v)]]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [str(node)]


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image} has no tag"
        assert "/" not in tag, f"{name}: image {image} has no tag"
        assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: tag {tag} is not a pinned version"


def pom_property(pom: Path, name: str) -> str:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ElementTree.parse(pom).find(f"m:properties/m:{name}", namespace)
    text = node.text if node is not None else None
    assert text, f"{pom} has no <{name}>"
    return text


def test_same_versions_as_the_local_stack(compose: dict[str, Any]) -> None:
    kafka = pom_property(PROJECT_ROOT / "jvm" / "kafka" / "pom.xml", "kafka.version")
    registry = pom_property(PROJECT_ROOT / "jvm" / "registry" / "pom.xml", "apicurio.version")
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{kafka}"
    assert compose["services"]["registry"]["image"] == f"apicurio/apicurio-registry:{registry}"


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no health check"
        assert not check.get("disable"), f"{name} has its health check disabled"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}


def test_registry_waits_for_a_healthy_broker(compose: dict[str, Any]) -> None:
    depends = compose["services"]["registry"]["depends_on"]
    assert depends == {"kafka": {"condition": "service_healthy"}}


def test_host_ports_are_the_settings_defaults(compose: dict[str, Any], defaults: Settings) -> None:
    kafka, registry = compose["services"]["kafka"], compose["services"]["registry"]
    env = kafka["environment"]
    host_listener = next(
        name for name, (_, port) in listeners(env["KAFKA_LISTENERS"]).items() if port in published(kafka)
    )
    container_port = listeners(env["KAFKA_LISTENERS"])[host_listener][1]
    assert published(kafka) == {container_port: defaults.local_kafka_port()}
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])[host_listener]
    assert f"{advertised[0]}:{advertised[1]}" == defaults.kafka_bootstrap_servers
    assert published(registry) == {8080: defaults.local_registry_port()}
    assert defaults.schema_registry_url.endswith("/apis/ccompat/v7")


def test_dotenv_example_in_the_header_moves_both_sides(
    compose: dict[str, Any], defaults: Settings, tmp_path: Path
) -> None:
    example = dotenv_example()
    dotenv = tmp_path / ".env"
    dotenv.write_text("\n".join(example))
    settings = Settings(_env_file=dotenv)
    env = dict(line.split("=", 1) for line in example if "${" not in line)
    assert published(compose["services"]["kafka"], env) == {9092: settings.local_kafka_port()}
    assert published(compose["services"]["registry"], env) == {8080: settings.local_registry_port()}
    assert settings.local_kafka_port() != defaults.local_kafka_port()
    advertised = interpolate(compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"], env)
    assert f"HOST://{settings.kafka_bootstrap_servers}" in advertised


def test_registry_stores_schemas_in_the_compose_broker(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]["environment"]
    registry = compose["services"]["registry"]["environment"]
    assert registry["APICURIO_STORAGE_KIND"] == "kafkasql"
    host, _, port = registry["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"].rpartition(":")
    assert host in {"kafka", compose["services"]["kafka"].get("hostname")}
    assert (host, int(port)) in listeners(kafka["KAFKA_ADVERTISED_LISTENERS"]).values()


def test_broker_data_on_a_named_volume(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    volumes = dict(v.split(":", 1) for v in kafka["volumes"])
    assert log_dir in volumes.values()
    name = next(n for n, path in volumes.items() if path == log_dir)
    assert name in compose["volumes"]


def test_no_plaintext_passwords(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET_KEY.search(key):
                match = VARIABLE.fullmatch(str(value))
                assert match, f"{name}: {key} has a literal value"
                assert match["default"] is None, f"{name}: {key} has a default value"
    for text in strings(compose):
        assert not SECRET_ASSIGNMENT.search(text), f"literal password in {text!r}"


def test_only_reelpulse_variables_each_with_a_default(compose: dict[str, Any]) -> None:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | COMPOSE_ONLY_VARIABLES
    for text in strings(compose):
        for match in VARIABLE.finditer(text):
            assert match["name"] in known, f"{match['name']} is not a reelpulse setting"
            assert match["default"], f"{match['name']} needs a default so no .env is required"
