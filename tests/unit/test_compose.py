"""docker-compose.yml, checked by parsing it (there is no Docker engine here, and so no
`docker compose config`): the whole platform, pinned images, health checks, dependencies
that wait, the same host ports as ``Settings`` defaults, a three-broker Kafka replicating
three times, secrets only from required variables documented in docker/.env.example,
only reelpulse's own settings, Airflow on PostgreSQL, the lake on MinIO and the jobs on
the Spark cluster."""

from __future__ import annotations

import inspect
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from xml.etree import ElementTree

import pytest
import yaml
from pydantic import SecretStr

from batch.spark import s3a_config
from collector.cli import serve
from reelpulse import stack
from reelpulse.settings import ENV_PREFIX, PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = PROJECT_ROOT / "docker" / ".env.example"
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
# ${NAME}, ${NAME:-default}, ${NAME:?error}; $$ is a literal dollar for the container.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z0-9_]+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")
SETTINGS_VARIABLES = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
SECRET_SETTINGS = {
    f"{ENV_PREFIX}{name.upper()}"
    for name, field in Settings.model_fields.items()
    if "SecretStr" in str(field.annotation) or field.annotation is SecretStr
}
# Host ports of services that have no setting of their own (see the file's header).
COMPOSE_ONLY_VARIABLES = {
    f"{ENV_PREFIX}{name}"
    for name in ("KAFKA_PORT", "KAFKA_PORT_2", "KAFKA_PORT_3", "REGISTRY_PORT", "COLLECTOR_PORT")
}
SECRET_KEY = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL|FERNET|ACCESS_KEY|ROOT_USER", re.IGNORECASE)
SECRET_ASSIGNMENT = re.compile(r"password\s*[=:]\s*[^\s$]", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^/:@\s]+:(\$\{[^}]*\}|[^@\s]+)@")

BROKERS = ("kafka-1", "kafka-2", "kafka-3")
AIRFLOW = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
ONE_SHOT = {"init", "minio-init", "airflow-init"}
LAKE_JOBS = ("airflow-scheduler", "reelpulse")  # where `reelpulse lake ...` runs
PLATFORM = {
    *BROKERS,
    "registry",
    "init",
    "streams-1",
    "streams-2",
    "collector",
    "minio",
    "minio-init",
    "spark-master",
    "spark-worker",
    "postgres",
    "airflow-init",
    *AIRFLOW,
    "reelpulse",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as they are without any environment or .env file."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def example_variables() -> dict[str, str]:
    """NAME -> value of every line docker/.env.example sets (comments left out)."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


# What a filled-in .env gives compose: a value for every required variable.
FILLED = {name: f"{name.lower()}-value-0123456789" for name in example_variables()}


def interpolate(value: Any, env: dict[str, str] | None = None) -> str:
    """Compose's substitution: ``${NAME:-default}``, ``${NAME:?error}`` (an error when
    unset or empty) and ``$$`` for a literal dollar."""
    env = {**FILLED, **(env or {})}

    def substitute(match: re.Match[str]) -> str:
        if env.get(match["name"]):
            return env[match["name"]]
        if match["op"] == ":?":
            raise KeyError(f"{match['name']} is required: {match['arg']}")
        return match["arg"] or ""

    return VARIABLE.sub(substitute, str(value)).replace("$$", "$")


def environment(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    return {key: interpolate(value, env) for key, value in (service.get("environment") or {}).items()}


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


def option(command: list[str], name: str) -> str:
    """The value after ``name`` in an exec-form command."""
    return command[command.index(name) + 1]


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *strings(v)]]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [str(node)]


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


def pom_property(pom: Path, name: str) -> str:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ElementTree.parse(pom).find(f"m:properties/m:{name}", namespace)
    text = node.text if node is not None else None
    assert text, f"{pom} has no <{name}>"
    return text


def long_running(service: dict[str, Any]) -> bool:
    """Services that stay up: not a job that exits, not a CLI started on demand."""
    return service.get("restart") != "no" and "profiles" not in service


def image_root() -> Path:
    """Where the Dockerfile puts the project: the WORKDIR its ``COPY . .`` runs in."""
    workdir = None
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("WORKDIR "):
            workdir = line.split()[1]
        if line.strip() == "COPY . .":
            assert workdir, "the project is copied before any WORKDIR"
            return Path(workdir)
    raise AssertionError("docker/Dockerfile does not copy the project")


# --------------------------------------------------------------------------- services and images


def test_the_whole_platform_is_there(services: dict[str, Any]) -> None:
    assert set(services) == PLATFORM
    assert {name for name, service in services.items() if service.get("restart") == "no"} == ONE_SHOT


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image} has no tag"
        assert "/" not in tag, f"{name}: image {image} has no tag"
        assert "$" not in image, f"{name}: image {image} is chosen by a variable"
        assert tag != "latest", f"{name}: image {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag} is not a pinned version"


def test_our_image_is_built_from_the_project_at_its_version(services: dict[str, Any]) -> None:
    ours = {name: s for name, s in services.items() if s["image"].startswith("reelpulse/")}
    assert ours.keys() >= {"init", "streams-1", "collector", "spark-master", *AIRFLOW, "reelpulse"}
    for name, service in ours.items():
        assert service["image"] == f"reelpulse/platform:{PYPROJECT['project']['version']}", name
        assert service["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}, name
    assert all("build" not in s for name, s in services.items() if name not in ours)


def test_the_dockerfile_installs_the_project_with_its_pins_and_jars() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)
    assert base
    python = re.search(r"<(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert python
    floor = PYPROJECT["project"]["requires-python"].split(",")[0].removeprefix(">=")
    assert re.fullmatch(rf"python:{re.escape(floor)}\.\d+-slim-\w+", base[1]), base[1]
    assert "openjdk-17-jdk-headless" in text
    assert "pip install -r" in text
    assert "optional-dependencies']['docker']" in text
    assert "pip install --no-deps -e ." in text
    assert "stack.S3_COMPONENT" in text  # the S3A jars are in the image
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    ignored = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert {"**/.env", "**/.env.*", ".venv", ".reelpulse", ".git"} <= set(ignored)


def test_same_versions_as_the_local_stack(services: dict[str, Any]) -> None:
    kafka = pom_property(PROJECT_ROOT / "jvm" / "kafka" / "pom.xml", "kafka.version")
    registry = pom_property(PROJECT_ROOT / "jvm" / "registry" / "pom.xml", "apicurio.version")
    assert {services[name]["image"] for name in BROKERS} == {f"apache/kafka:{kafka}"}
    assert services["registry"]["image"] == f"apicurio/apicurio-registry:{registry}"


# --------------------------------------------------------------------------- health and order


def test_every_long_running_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if not long_running(service):
            continue
        assert service.get("restart") == "unless-stopped", f"{name} is not restarted"
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no health check"
        assert not check.get("disable"), f"{name} has its health check disabled"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}


def test_dependencies_wait_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert spec == {"condition": expected}, f"{name} -> {target}"
    needs = {
        "registry": set(BROKERS),
        "init": {"registry"},
        "streams-1": {"init"},
        "streams-2": {"init"},
        "collector": {"init"},
        "minio-init": {"minio"},
        "spark-worker": {"spark-master"},
        "airflow-init": {"postgres"},
        **{name: {"airflow-init"} for name in AIRFLOW},
        **{name: {"init", "minio-init", "spark-worker"} for name in LAKE_JOBS},
    }
    for name, targets in needs.items():
        assert targets <= set(services[name]["depends_on"]), name


# --------------------------------------------------------------------------- ports


def test_host_ports_are_the_settings_defaults(services: dict[str, Any], defaults: Settings) -> None:
    kafka = services["kafka-1"]
    env = kafka["environment"]
    host_listener = next(
        name for name, (_, port) in listeners(env["KAFKA_LISTENERS"]).items() if port in published(kafka)
    )
    container_port = listeners(env["KAFKA_LISTENERS"])[host_listener][1]
    assert published(kafka) == {container_port: defaults.local_kafka_port()}
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])[host_listener]
    assert f"{advertised[0]}:{advertised[1]}" == defaults.kafka_bootstrap_servers
    assert published(services["registry"]) == {8080: defaults.local_registry_port()}
    assert defaults.schema_registry_url.endswith("/apis/ccompat/v7")
    assert published(services["airflow-apiserver"]) == {8088: defaults.airflow_port}
    streams_port = defaults.streams_web_port  # the worker's own default, inside too
    assert published(services["streams-1"]) == {streams_port: streams_port}
    collector_port = inspect.signature(serve).parameters["port"].default
    assert published(services["collector"]) == {collector_port: collector_port}
    assert option(services["collector"]["command"], "--port") == str(collector_port)
    assert published(services["minio"]) == {9000: 9000, 9001: 9001}


def test_every_port_is_loopback_only_and_published_once(services: dict[str, Any]) -> None:
    host_ports = [port for service in services.values() for port in published(service).values()]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


def test_every_broker_advertises_its_own_host_port(services: dict[str, Any]) -> None:
    for name in BROKERS:
        env = services[name]["environment"]
        container_port = listeners(env["KAFKA_LISTENERS"])["HOST"][1]
        host_port = published(services[name])[container_port]
        assert listeners(env["KAFKA_ADVERTISED_LISTENERS"])["HOST"] == ("127.0.0.1", host_port)


def test_dotenv_example_in_the_header_moves_both_sides(
    services: dict[str, Any], defaults: Settings, tmp_path: Path
) -> None:
    example = dotenv_example()
    dotenv = tmp_path / ".env"
    dotenv.write_text("\n".join(example))
    settings = Settings(_env_file=dotenv)  # type: ignore[call-arg]
    env = dict(line.split("=", 1) for line in example if "${" not in line)
    assert published(services["kafka-1"], env) == {9092: settings.local_kafka_port()}
    assert published(services["registry"], env) == {8080: settings.local_registry_port()}
    assert settings.local_kafka_port() != defaults.local_kafka_port()
    advertised = interpolate(services["kafka-1"]["environment"]["KAFKA_ADVERTISED_LISTENERS"], env)
    assert f"HOST://{settings.kafka_bootstrap_servers}" in advertised


# --------------------------------------------------------------------------- Kafka


def test_kafka_is_three_brokers_replicating_three_times(services: dict[str, Any]) -> None:
    brokers = {name: s for name, s in services.items() if s["image"].startswith("apache/kafka:")}
    assert set(brokers) == set(BROKERS)
    envs = {name: environment(s) for name, s in brokers.items()}
    assert {env["KAFKA_NODE_ID"] for env in envs.values()} == {"1", "2", "3"}
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    voters = {
        f"{env['KAFKA_NODE_ID']}@{brokers[name]['hostname']}:{listeners(env['KAFKA_LISTENERS'])['CONTROLLER'][1]}"
        for name, env in envs.items()
    }
    for env in envs.values():
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters
        for key in (
            "KAFKA_DEFAULT_REPLICATION_FACTOR",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        ):
            assert env[key] == "3", key
        for key in (
            "KAFKA_MIN_INSYNC_REPLICAS",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
        ):
            assert env[key] == "2", key
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_our_topics_are_created_with_three_replicas(services: dict[str, Any]) -> None:
    ours = [
        s for s in services.values() if f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS" in s.get("environment", {})
    ]
    assert len(ours) >= 6
    for service in ours:
        assert environment(service)[f"{ENV_PREFIX}TOPIC_REPLICATION_FACTOR"] == "3"


def test_clients_know_every_broker(services: dict[str, Any]) -> None:
    internal = {
        "{}:{}".format(*listeners(services[name]["environment"]["KAFKA_ADVERTISED_LISTENERS"])["INTERNAL"])
        for name in BROKERS
    }
    registry = environment(services["registry"])
    assert registry["APICURIO_STORAGE_KIND"] == "kafkasql"
    assert set(registry["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"].split(",")) == internal
    for service in services.values():
        servers = environment(service).get(f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS")
        if servers:
            assert set(servers.split(",")) == internal


def test_broker_data_on_named_volumes(compose: dict[str, Any]) -> None:
    used = set()
    for name in BROKERS:
        kafka = compose["services"][name]
        log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
        volumes = dict(v.split(":", 1) for v in kafka["volumes"])
        volume = next(n for n, path in volumes.items() if path == log_dir)
        assert volume in compose["volumes"]
        used.add(volume)
    assert len(used) == len(BROKERS), "brokers share a data volume"


def test_every_named_volume_is_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for spec in service.get("volumes", []):
            source = spec.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
            else:
                assert (PROJECT_ROOT / source).exists(), f"{name}: {source} does not exist"


# --------------------------------------------------------------------------- settings and secrets


def test_only_reelpulse_settings_and_documented_variables(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for key in service.get("environment", {}):
            if key.startswith(ENV_PREFIX):
                assert key in SETTINGS_VARIABLES, f"{key} is not a field of Settings"
    documented = set(example_variables())
    for text in strings(compose):
        for match in VARIABLE.finditer(text):
            name = match["name"]
            if match["op"] == ":?":
                assert name in documented, f"{name} is required but not in docker/.env.example"
                continue
            assert name in SETTINGS_VARIABLES | COMPOSE_ONLY_VARIABLES, f"{name} is not a reelpulse setting"
            assert match["op"] == ":-", f"{name} needs a default so no .env is required"
            assert match["arg"], f"{name} needs a default so no .env is required"


def test_reelpulse_environment_makes_valid_settings(services: dict[str, Any]) -> None:
    for service in services.values():
        values = {
            key.removeprefix(ENV_PREFIX).lower(): value
            for key, value in environment(service).items()
            if key.startswith(ENV_PREFIX)
        }
        if values:
            Settings(_env_file=None, **values)  # type: ignore[call-arg]
    assert environment(services["init"]).keys() <= environment(services["airflow-scheduler"]).keys()


def test_secrets_come_from_required_variables(compose: dict[str, Any]) -> None:
    assert {
        f"{ENV_PREFIX}SILVER_PSEUDONYMIZATION_KEY",
        f"{ENV_PREFIX}S3_SECRET_ACCESS_KEY",
    } <= SECRET_SETTINGS
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            secret = key in SECRET_SETTINGS or (SECRET_KEY.search(key) and not key.endswith("_FILE"))
            if secret:
                match = VARIABLE.fullmatch(str(value))
                assert match, f"{name}: {key} has a literal value"
                assert match["op"] == ":?", f"{name}: {key} must be required (${{NAME:?...}})"
    for text in strings(compose):
        assert not SECRET_ASSIGNMENT.search(VARIABLE.sub("", text)), f"literal password in {text!r}"
        for password in URL_PASSWORD.findall(text):
            match = VARIABLE.fullmatch(password)
            assert match, f"literal password in the URL {text!r}"
            assert match["op"] == ":?", f"{text!r}: its password must be required"


def test_env_example_documents_every_secret_without_a_value(compose: dict[str, Any]) -> None:
    required = {
        match["name"] for text in strings(compose) for match in VARIABLE.finditer(text) if match["op"] == ":?"
    }
    example = example_variables()
    assert set(example) == required
    assert not any(example.values()), "docker/.env.example must not hold usable values"
    empty = {"POSTGRES_PASSWORD": ""}  # as in a copied, unfilled example: refused
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD is required"):
        interpolate(compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"], empty)


# --------------------------------------------------------------------------- Airflow, the lake, Spark


def test_airflow_runs_on_postgres_with_the_dags_folder(services: dict[str, Any], defaults: Settings) -> None:
    postgres = environment(services["postgres"])
    assert services["postgres"]["image"].startswith("postgres:")
    commands = {name: services[name]["command"][:2] for name in (*AIRFLOW, "airflow-init")}
    assert commands == {
        "airflow-apiserver": ["airflow", "api-server"],
        "airflow-scheduler": ["airflow", "scheduler"],
        "airflow-dag-processor": ["airflow", "dag-processor"],
        "airflow-triggerer": ["airflow", "triggerer"],
        "airflow-init": ["airflow", "db"],
    }
    assert services["airflow-init"]["command"] == ["airflow", "db", "migrate"]
    dags = str(image_root() / defaults.airflow_dags_dir.relative_to(PROJECT_ROOT))
    shared = None
    for name in (*AIRFLOW, "airflow-init"):
        env = environment(services[name])
        database = urlparse(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert database.scheme == "postgresql+psycopg2"
        assert (database.hostname, database.username, database.path) == (
            "postgres",
            postgres["POSTGRES_USER"],
            f"/{postgres['POSTGRES_DB']}",
        )
        assert database.password == postgres["POSTGRES_PASSWORD"]
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == env[f"{ENV_PREFIX}AIRFLOW_DAGS_DIR"] == dags
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        keys = {k: v for k, v in env.items() if k.endswith(("FERNET_KEY", "SECRET_KEY", "JWT_SECRET"))}
        assert len(keys) == 3
        shared = shared or keys
        assert keys == shared, f"{name} has other Airflow keys than the rest"
    execution = urlparse(
        environment(services["airflow-scheduler"])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    )
    assert execution.hostname == "airflow-apiserver"
    assert str(execution.port) == option(services["airflow-apiserver"]["command"], "--port")
    assert any(d.startswith("apache-airflow==3.3.") for d in PYPROJECT["project"]["dependencies"])
    assert any(
        d.startswith("apache-airflow-providers-postgres==")
        for d in PYPROJECT["project"]["optional-dependencies"]["docker"]
    )


def test_the_lake_is_on_minio(services: dict[str, Any]) -> None:
    minio_port = next(iter(published(services["minio"])))
    for name in LAKE_JOBS:
        env = environment(services[name])
        lake = urlparse(env[f"{ENV_PREFIX}LAKE_DIR"])
        endpoint = urlparse(env[f"{ENV_PREFIX}S3_ENDPOINT_URL"])
        assert lake.scheme == "s3a"
        assert (endpoint.hostname, endpoint.port) == ("minio", minio_port)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            **{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)},
        )
        assert stack.lake_on_s3(settings)
        s3a = s3a_config(settings)
        assert s3a["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
        assert s3a["spark.hadoop.fs.s3a.path.style.access"] == "true"
        assert s3a["spark.hadoop.fs.s3a.access.key"] == FILLED[f"{ENV_PREFIX}S3_ACCESS_KEY_ID"]
        script = "\n".join(services["minio-init"]["entrypoint"])
        assert f"mc mb --ignore-existing local/{lake.netloc}" in script
        policy = (PROJECT_ROOT / "docker" / "minio" / "reelpulse-lake-policy.json").read_text()
        assert f"arn:aws:s3:::{lake.netloc}/*" in policy


def test_lake_secrets_only_where_lake_jobs_run(services: dict[str, Any]) -> None:
    lake = {f"{ENV_PREFIX}{name}" for name in ("LAKE_DIR", "S3_ENDPOINT_URL", "SPARK_MASTER")}
    secrets = {f"{ENV_PREFIX}S3_SECRET_ACCESS_KEY", f"{ENV_PREFIX}SILVER_PSEUDONYMIZATION_KEY"}
    holders = {name for name, s in services.items() if secrets & set(s.get("environment") or {})}
    assert holders == {*LAKE_JOBS, "minio-init"}
    lake_dirs = {environment(services[name])[f"{ENV_PREFIX}LAKE_DIR"] for name in (*AIRFLOW, *LAKE_JOBS)}
    assert len(lake_dirs) == 1, "the DAGs' assets are named after the lake: one location for all"
    for name in (*AIRFLOW, *LAKE_JOBS):
        assert lake <= set(services[name]["environment"]), name


def test_lake_jobs_use_the_spark_cluster(services: dict[str, Any]) -> None:
    master = services["spark-master"]
    url = f"spark://{master['hostname']}:{option(master['command'], '--port')}"
    assert master["command"][:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    assert services["spark-worker"]["command"][:3] == [
        "spark-class",
        "org.apache.spark.deploy.worker.Worker",
        url,
    ]
    for name in LAKE_JOBS:
        assert environment(services[name])[f"{ENV_PREFIX}SPARK_MASTER"] == url
