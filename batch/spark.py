"""The Spark session of the lake jobs: Delta enabled, connectors from the jar cache,
sized for a small machine. Built only when a job asks for it, never at import.

:func:`session_config` is every option the session gets, as a plain dict: a local master
binds the driver to loopback; a cluster (``spark://...``, as in docker-compose) lets Spark
pick an address its executors can reach; a lake on S3 or MinIO (``s3a://``) adds Hadoop's
S3A options from the ``s3_*`` settings and the S3A jars (see jvm/spark-s3/pom.xml)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from reelpulse import stack
from reelpulse.settings import Settings, secret_value

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

VERSION_SUFFIX = re.compile(r"-\d[\w.\-]*\.jar$")
S3_COMPATIBLE_REGION = "us-east-1"


def connector_jars(settings: Settings) -> list[Path]:
    """Jars of the Spark component that the pyspark wheel does not already ship."""
    import pyspark

    shipped = {_artifact(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    fetched = list(stack.fetch_jars(settings, "spark").glob("*.jar"))
    if stack.lake_on_s3(settings):
        fetched += stack.fetch_jars(settings, stack.S3_COMPONENT).glob("*.jar")
    return sorted(p for p in fetched if _artifact(p.name) not in shipped)


def _artifact(file_name: str) -> str:
    return VERSION_SUFFIX.sub("", file_name)


def session(settings: Settings, app_name: str = "reelpulse") -> SparkSession:
    """A SparkSession with Delta, the Kafka source and Avro; UI off, few shuffle partitions."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name).master(settings.spark_master)
    for key, value in session_config(settings, connector_jars(settings)).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


@contextmanager
def session_conf(spark: SparkSession, values: Mapping[str, str]) -> Iterator[None]:
    """Set Spark SQL confs of this session for the block, then put back what was there
    (unset again when nothing was)."""
    previous = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def session_config(settings: Settings, jars: list[Path]) -> dict[str, str]:
    """Every option of the lake jobs' session, from the settings and the connector jars."""
    config = {
        "spark.jars": ",".join(str(p) for p in jars),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.streaming.stopGracefullyOnShutdown": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.databricks.delta.snapshotPartitions": "2",  # small tables, few cores
        # Room for the generated code of every bronze event type's plans (about 100 per run),
        # so a session that ingests again reuses it instead of compiling it anew.
        "spark.sql.codegen.cache.maxEntries": "1000",
    }
    if settings.spark_driver_java_options:
        config["spark.driver.extraJavaOptions"] = settings.spark_driver_java_options
    if settings.spark_master.startswith("local"):
        # Nothing outside this machine talks to a local driver. A cluster's executors
        # connect back to the driver, so there Spark picks a reachable address itself.
        config["spark.driver.host"] = "127.0.0.1"
        config["spark.driver.bindAddress"] = "127.0.0.1"
    return config | s3a_config(settings)


def s3a_config(settings: Settings) -> dict[str, str]:
    """Hadoop's S3A options for a lake on S3 or MinIO; none unless the lake is ``s3a://``
    or an ``s3_*`` setting is given. Static keys when set, else S3A's default chain."""
    if not (stack.lake_on_s3(settings) or settings.s3_endpoint_url or settings.s3_access_key_id):
        return {}
    s3a = "spark.hadoop.fs.s3a."
    config = {
        f"{s3a}impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        f"{s3a}path.style.access": str(settings.s3_path_style_access).lower(),
    }
    if settings.s3_endpoint_url:
        config[f"{s3a}endpoint"] = settings.s3_endpoint_url
        endpoint = urlparse(settings.s3_endpoint_url)
        config[f"{s3a}connection.ssl.enabled"] = str(endpoint.scheme == "https").lower()
        if not (endpoint.hostname or "").endswith(".amazonaws.com"):
            # MinIO and other S3-compatible stores: the region MinIO answers to by default;
            # an AWS endpoint names its own region.
            config[f"{s3a}endpoint.region"] = S3_COMPATIBLE_REGION
    if settings.s3_access_key_id:
        config[f"{s3a}access.key"] = settings.s3_access_key_id
        config[f"{s3a}secret.key"] = secret_value(settings.s3_secret_access_key)
        config[f"{s3a}aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
    return config


# How long the broker may hold a fetch that finds nothing new (Kafka's default is 500 ms).
# A batch or availableNow read stops at offsets known in advance, which are the end of the
# log when it catches up: each of its tasks then waits out a held fetch at the end of its
# range, half a second of idle core per Kafka partition, a third of a million-record read.
FETCH_MAX_WAIT_MS = "10"


# The Java login module of each SASL mechanism the settings allow.
JAAS_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def kafka_options(settings: Settings) -> dict[str, str]:
    """The Kafka source's options: the settings every client uses, in the names of Kafka's
    Java client (a SASL login as a JAAS line, the CA file as a PEM trust store)."""
    options = {
        "kafka.bootstrap.servers": settings.kafka_bootstrap_servers,
        "kafka.security.protocol": settings.kafka_security_protocol,
        "kafka.fetch.max.wait.ms": FETCH_MAX_WAIT_MS,
    }
    if settings.kafka_sasl_mechanism:
        module = JAAS_LOGIN_MODULES[settings.kafka_sasl_mechanism]
        username = _jaas_quoted(settings.kafka_sasl_username or "")
        password = _jaas_quoted(secret_value(settings.kafka_sasl_password))
        options["kafka.sasl.mechanism"] = settings.kafka_sasl_mechanism
        options["kafka.sasl.jaas.config"] = f"{module} required username={username} password={password};"
    if settings.kafka_ssl_ca_location:
        options["kafka.ssl.truststore.type"] = "PEM"
        options["kafka.ssl.truststore.location"] = str(settings.kafka_ssl_ca_location)
    return options


def _jaas_quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
