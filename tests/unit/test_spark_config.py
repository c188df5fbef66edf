"""The lake jobs' Spark options, built as a plain dict (no Spark started): loopback for a
local master, a reachable driver for a cluster, S3A for a lake on MinIO or S3, and the S3A
jars only for such a lake, at the Hadoop version the pyspark wheel ships; and the driver's
JVM options, checked in the JVM of the tests' session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pyspark
import pytest
from pydantic import SecretStr

from batch.spark import kafka_options, s3a_config, session_config
from reelpulse import stack
from reelpulse.settings import ENV_PREFIX, PROJECT_ROOT, Settings

S3A = "spark.hadoop.fs.s3a."
MINIO = {
    "lake_dir": "s3a://reelpulse-lake/lake",
    "s3_endpoint_url": "http://minio:9000",
    "s3_access_key_id": "reelpulse-lake",
    "s3_secret_access_key": "not-a-real-secret",
}


@pytest.fixture
def plain(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings without any environment or .env file."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_lake_on_minio_gets_s3a_with_static_keys(plain: Settings) -> None:
    settings = Settings(_env_file=None, spark_master="spark://spark-master:7077", **MINIO)  # type: ignore[call-arg]
    config = session_config(settings, [Path("/jars/a.jar"), Path("/jars/b.jar")])
    assert config[f"{S3A}impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert config[f"{S3A}endpoint"] == "http://minio:9000"
    assert config[f"{S3A}access.key"] == "reelpulse-lake"
    assert config[f"{S3A}secret.key"] == "not-a-real-secret"
    assert config[f"{S3A}path.style.access"] == "true"
    assert config[f"{S3A}connection.ssl.enabled"] == "false"
    assert config[f"{S3A}endpoint.region"] == "us-east-1"
    assert config[f"{S3A}aws.credentials.provider"].endswith("SimpleAWSCredentialsProvider")
    assert config["spark.jars"] == "/jars/a.jar,/jars/b.jar"
    assert config["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    # Executors on the cluster connect back to the driver: never pinned to loopback there.
    assert "spark.driver.host" not in config
    assert "spark.driver.bindAddress" not in config


def test_aws_s3_keeps_its_region_and_default_credentials(plain: Settings) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        lake_dir="s3a://lake-bucket/lake",
        s3_endpoint_url="https://s3.eu-west-1.amazonaws.com",
        s3_path_style_access=False,
    )
    config = s3a_config(settings)
    assert config[f"{S3A}connection.ssl.enabled"] == "true"
    assert config[f"{S3A}path.style.access"] == "false"
    assert f"{S3A}endpoint.region" not in config
    assert f"{S3A}access.key" not in config  # S3A's own provider chain (roles, env, profile)
    assert f"{S3A}aws.credentials.provider" not in config


def test_a_local_lake_gets_no_s3a_and_a_loopback_driver(plain: Settings) -> None:
    config = session_config(plain, [])
    assert not [key for key in config if key.startswith(S3A)]
    assert config["spark.driver.host"] == config["spark.driver.bindAddress"] == "127.0.0.1"
    assert config["spark.sql.shuffle.partitions"] == str(plain.spark_shuffle_partitions)


def test_the_driver_jvm_runs_the_throughput_collector(plain: Settings, spark: Any) -> None:
    assert "-XX:+UseParallelGC" in session_config(plain, [])["spark.driver.extraJavaOptions"]
    beans = spark._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    assert {bean.getName() for bean in beans} == {"PS Scavenge", "PS MarkSweep"}


def test_no_driver_java_options_leaves_the_jvm_its_defaults(plain: Settings) -> None:
    settings = plain.model_copy(update={"spark_driver_java_options": ""})
    assert "spark.driver.extraJavaOptions" not in session_config(settings, [])


def test_the_kafka_source_gets_the_clients_settings_and_a_short_fetch_wait(plain: Settings) -> None:
    settings = plain.model_copy(update={"kafka_bootstrap_servers": "broker-1:9092,broker-2:9092"})
    options = kafka_options(settings)
    assert options["kafka.bootstrap.servers"] == "broker-1:9092,broker-2:9092"
    assert options["kafka.security.protocol"] == settings.kafka_security_protocol
    # A catch-up ends at the end of the log: the broker must not hold its last fetches 500 ms.
    assert int(options["kafka.fetch.max.wait.ms"]) < 100
    assert all(key.startswith("kafka.") for key in options)


def test_a_sasl_ssl_cluster_gets_the_java_clients_login_and_trust_store(plain: Settings) -> None:
    settings = plain.model_copy(
        update={
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": "bronze",
            "kafka_sasl_password": SecretStr('pa"ss\\word'),
            "kafka_ssl_ca_location": Path("/etc/kafka/ca.pem"),
        }
    )
    options = kafka_options(settings)
    assert options["kafka.security.protocol"] == "SASL_SSL"
    assert options["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert options["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="bronze" password="pa\\"ss\\\\word";'
    )
    assert options["kafka.ssl.truststore.type"] == "PEM"
    assert options["kafka.ssl.truststore.location"] == "/etc/kafka/ca.pem"
    # librdkafka's names mean nothing to the Java client Spark's Kafka source runs.
    assert not {"kafka.sasl.username", "kafka.sasl.password", "kafka.ssl.ca.location"} & set(options)


def test_the_s3a_jars_are_fetched_only_for_a_lake_on_s3(plain: Settings) -> None:
    assert stack.S3_COMPONENT not in stack.components(plain)
    assert stack.S3_COMPONENT in stack.components(plain, with_s3=True)
    on_minio = Settings(_env_file=None, **MINIO)  # type: ignore[call-arg]
    assert stack.S3_COMPONENT in stack.components(on_minio)
    assert {"kafka", "registry", "spark"} <= set(stack.components(plain))


def test_hadoop_aws_matches_the_hadoop_in_the_pyspark_wheel() -> None:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ElementTree.parse(PROJECT_ROOT / "jvm" / stack.S3_COMPONENT / "pom.xml")
    version = pom.findtext("m:properties/m:hadoop.version", namespaces=namespace)
    shipped = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert shipped, "the pyspark wheel no longer ships hadoop-client-api"
    assert shipped[0].name == f"hadoop-client-api-{version}.jar"
