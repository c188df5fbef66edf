"""One typed settings object for every reelpulse component.

Every value can come from an environment variable named ``REELPULSE_<FIELD>`` (or a
``.env`` file); an argument given in code beats the environment. The local stack, the
docker-compose stack and a remote cluster differ only in these values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "REELPULSE_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Settings(BaseSettings):
    """Where the platform's services are and how the local stack runs them."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True)

    # Kafka
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None

    # Schema registry (Confluent-compatible API)
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7",
        description="Base URL of the Confluent-compatible schema registry API.",
    )
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None

    # Event contract
    schemas_dir: Path = PROJECT_ROOT / "schemas"
    topic_partitions: int = Field(3, ge=1, description="Partitions of each event topic.")
    topic_replication_factor: int = Field(1, ge=1)

    # Lake (batch/: Spark with Delta)
    lake_dir: str = Field(
        str(PROJECT_ROOT / "lake"), description="Root of the Delta Lake: a local path or an s3a:// URI."
    )
    spark_master: str = Field("local[*]", description="Spark master URL; local[*] uses every core.")
    spark_driver_memory: str = "2g"
    spark_driver_java_options: str = Field(
        "-XX:+UseParallelGC",
        description="JVM options of the Spark driver (with a local master, the JVM that runs the tasks "
        "too). The lake jobs are batch work on few cores: with the throughput collector bronze's "
        "catch-up ran 8-16% faster than with G1 in the lake benchmark, silver 15-25%.",
    )
    spark_shuffle_partitions: int = Field(4, ge=1, description="Few cores, small batches: few partitions.")
    bronze_max_offsets_per_batch: int = Field(
        1_000_000,
        ge=1,
        description="Kafka records per bronze micro-batch per topic (bounds memory; the batch is cached "
        "and spills to disk when it must; fewer batches mean fewer Delta commits).",
    )
    bronze_writer_threads: int = Field(
        8,
        ge=1,
        description="Event types of one topic's micro-batch written at the same time (each write is a "
        "Spark job of one task per Kafka partition; while one plans or commits on the driver, the others' "
        "tasks keep the cores busy). 8 writes every event type of the playback topic at once.",
    )
    silver_pseudonymization_key: SecretStr | None = Field(
        None, description="Key of the keyed hash (HMAC-SHA256) of personal fields; at least 16 bytes."
    )
    silver_allowed_lateness_days: int = Field(3, ge=0, description="Older events go to silver/_late.")
    silver_max_clock_skew_hours: int = Field(24, ge=1, description="Events this far ahead go to _late.")
    silver_session_timeout_minutes: int = Field(30, ge=1, description="Silent sessions close as TIMEOUT.")

    # Local stack (plain processes on this machine)
    state_dir: Path = Field(
        PROJECT_ROOT / ".reelpulse",
        description="Broker data, logs and pid files of the local stack.",
    )
    jar_cache: Path = Field(
        PROJECT_ROOT / ".reelpulse" / "jvm",
        description="Jars fetched from Maven Central, one folder per component.",
    )
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    registry_heap: str = "384m"
    registry_management_port: int = 9001
    java_home: Path | None = Field(
        None, description="JDK used for Kafka and the registry; default: java on PATH."
    )
    startup_timeout_s: float = Field(120.0, gt=0)

    # Collector (collector/: the HTTP front door for devices)
    collector_keys_file: Path | None = Field(
        None, description="Hashed API keys; default: <state dir>/collector/api_keys.json."
    )
    collector_max_body_bytes: int = Field(
        1_048_576, gt=0, description="Largest request body, before and after gzip."
    )
    collector_max_batch_events: int = Field(1000, ge=1, description="Most events in one request.")
    collector_rate_limit_events_per_s: float = Field(
        10_000.0, gt=0, description="Events per second per API key (per worker process)."
    )
    collector_rate_limit_burst: int = Field(
        20_000, ge=1, description="Token-bucket size per API key; at least the batch limit."
    )
    collector_clock_skew_s: float = Field(
        86_400.0, gt=0, description="Events whose event_time is farther from now are rejected."
    )
    collector_delivery_timeout_s: float = Field(
        5.0, gt=0, description="How long a request waits for Kafka's acknowledgement before a 503."
    )

    # Streams (streams/: Faust monitors)
    streams_app_id: str = Field("reelpulse-streams", description="Faust app id: consumer group, table names.")
    streams_web_port: int = Field(6066, ge=1, le=65535, description="Port of a worker's web endpoints.")
    streams_rules: Path | None = Field(None, description="Rules file; default: streams/rules.toml.")

    # Orchestration (dags/: Airflow 3)
    airflow_home: Path | None = Field(
        None, description="AIRFLOW_HOME of `reelpulse airflow`; default: <state dir>/airflow."
    )
    airflow_port: int = Field(8088, ge=1, le=65535, description="Port of the Airflow UI and API server.")
    airflow_dags_dir: Path = Field(PROJECT_ROOT / "dags", description="The DAG folder Airflow parses.")

    # Object storage for an s3a:// lake (MinIO in docker-compose, or S3)
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint, e.g. http://minio:9000; default: AWS S3."
    )
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_path_style_access: bool = Field(True, description="Path-style URLs, as MinIO needs.")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS must name at least one broker")
        return value.strip()

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_is_http(cls, value: str) -> str:
        if urlparse(value).scheme not in {"http", "https"}:
            raise ValueError(f"{ENV_PREFIX}SCHEMA_REGISTRY_URL must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def pseudonymization_key(self) -> bytes:
        """The silver hash key, or an error naming the variable that sets it."""
        if self.silver_pseudonymization_key is None:
            raise ValueError(
                f"{ENV_PREFIX}SILVER_PSEUDONYMIZATION_KEY is not set: silver hashes personal fields "
                "with it (at least 16 bytes; e.g. the output of `openssl rand -hex 32`)"
            )
        return self.silver_pseudonymization_key.get_secret_value().encode()

    def as_env(self) -> dict[str, str]:
        """``REELPULSE_*`` variables that make a child process build these same settings."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = text
        return env

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings shared by producers, consumers and the admin client."""
        config = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username or ""
            config["sasl.password"] = secret_value(self.kafka_sasl_password)
        if self.kafka_ssl_ca_location:
            config["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        return config

    def schema_registry_config(self) -> dict[str, str]:
        """Settings for confluent-kafka's ``SchemaRegistryClient``."""
        config = {"url": self.schema_registry_url}
        if self.schema_registry_username:
            config["basic.auth.user.info"] = (
                f"{self.schema_registry_username}:{secret_value(self.schema_registry_password)}"
            )
        return config

    def local_kafka_port(self) -> int:
        """Port of the local broker, taken from the bootstrap servers."""
        return _loopback_port(self.kafka_bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS")

    def local_registry_port(self) -> int:
        """Port of the local registry, taken from the registry URL."""
        return _loopback_port(urlparse(self.schema_registry_url).netloc, "SCHEMA_REGISTRY_URL")


def secret_value(value: SecretStr | None) -> str:
    """A secret setting's text, or "" when it is unset."""
    return value.get_secret_value() if value else ""


def _loopback_port(host_port: str, variable: str) -> int:
    first = host_port.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if host.strip("[]") not in LOOPBACK_HOSTS or not port.isdigit():
        raise ValueError(
            f"{ENV_PREFIX}{variable}={host_port!r} is not a loopback host:port; "
            "the local stack only runs on this machine (point it at 127.0.0.1:<port>)"
        )
    return int(port)
