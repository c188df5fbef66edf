"""The Spark session of the lake jobs: Delta enabled, connectors from the jar cache,
sized for a small machine. Built only when a job asks for it, never at import."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from reelpulse import stack
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

VERSION_SUFFIX = re.compile(r"-\d[\w.\-]*\.jar$")


def connector_jars(settings: Settings) -> list[Path]:
    """Jars of the Spark component that the pyspark wheel does not already ship."""
    import pyspark

    shipped = {_artifact(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    fetched = stack.fetch_jars(settings, "spark").glob("*.jar")
    return sorted(p for p in fetched if _artifact(p.name) not in shipped)


def _artifact(file_name: str) -> str:
    return VERSION_SUFFIX.sub("", file_name)


def session(settings: Settings, app_name: str = "reelpulse") -> SparkSession:
    """A SparkSession with Delta, the Kafka source and Avro; UI off, few shuffle partitions."""
    from pyspark.sql import SparkSession

    jars = ",".join(str(p) for p in connector_jars(settings))
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.jars", jars)
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")  # small tables, few cores
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def kafka_options(settings: Settings) -> dict[str, str]:
    """The Kafka source's options, from the same settings every client uses."""
    return {f"kafka.{key}": value for key, value in settings.kafka_client_config().items()}
