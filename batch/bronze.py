"""Bronze: every event topic into Delta, decoded by schema id, exactly once.

One Structured Streaming query per topic, ``trigger(availableNow=True)`` with its own
checkpoint: each run ingests what is new and stops. Each micro-batch is decoded by the
schema id in its Confluent wire-format header: the writer schema comes from the
registry (once per id per run), the reader schema is the current contract, so several
writer versions land in one table. Records that cannot be decoded go to the quarantine
table with the reason and their original bytes and coordinates.

Guarantee: exactly once. Offsets are committed by the checkpoint only after the batch
is written, and every Delta write of a batch carries ``txnAppId``/``txnVersion`` (the
query and batch id), so a batch replayed after a crash is skipped where it already landed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka.schema_registry.error import SchemaRegistryError

from batch import spark as spark_support
from batch.lake import Lake
from reelpulse import registry
from reelpulse.contract import Contract, EventType
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("reelpulse.batch.bronze")

KAFKA_COLUMNS = ("topic", "partition", "offset", "timestamp", "key", "value")
NOT_WIRE_FORMAT_REASON = "value is not in the Confluent wire format (magic byte 0 + 4-byte schema id)"
QUARANTINE = "_quarantine"


@dataclass(frozen=True)
class Writer:
    """What a schema id in the registry decodes to."""

    schema_id: int
    event: EventType | None
    schema_str: str
    problem: str = ""


def event_time_path(event: EventType) -> str:
    """Column path of the event's time: in the envelope for client events, else top level."""
    names = {f["name"] for f in event.schema["fields"]}
    return "envelope.event_time" if "envelope" in names else "event_time"


class WriterCache:
    """Writer schemas by id, fetched from the registry once per id per run."""

    def __init__(self, settings: Settings, contract: Contract) -> None:
        self.client, self.contract = registry.client(settings), contract
        self.writers: dict[int, Writer] = {}

    def get(self, schema_id: int) -> Writer:
        if schema_id not in self.writers:
            self.writers[schema_id] = self._fetch(schema_id)
        return self.writers[schema_id]

    def _fetch(self, schema_id: int) -> Writer:
        try:
            schema_str = self.client.get_schema(schema_id).schema_str or ""
        except SchemaRegistryError as error:
            return Writer(schema_id, None, "", f"unknown schema id {schema_id}: {error.error_message}")
        name = json.loads(schema_str).get("name", "")
        event = self.contract.by_full_name.get(name)
        problem = "" if event else f"schema id {schema_id} is {name!r}, not an event type of the contract"
        return Writer(schema_id, event, schema_str, problem)


def read_topic(spark: SparkSession, settings: Settings, topic: str) -> DataFrame:
    return (
        spark.readStream.format("kafka")
        .options(**spark_support.kafka_options(settings))
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
        .option("maxOffsetsPerTrigger", str(settings.bronze_max_offsets_per_batch))
        .load()
    )


def with_header(frame: DataFrame) -> DataFrame:
    """Add ``_magic`` and ``_schema_id`` parsed from the 5-byte wire-format header."""
    from pyspark.sql import functions as F

    magic = F.expr("CASE WHEN length(value) >= 5 THEN conv(hex(substring(value, 1, 1)), 16, 10) END")
    schema_id = F.conv(F.hex(F.expr("substring(value, 2, 4)")), 16, 10)
    return frame.withColumn("_magic", magic.cast("int")).withColumn("_schema_id", schema_id.cast("long"))


def kafka_metadata() -> list[Column]:
    from pyspark.sql import functions as F

    return [
        F.col("topic").alias("_kafka_topic"),
        F.col("partition").alias("_kafka_partition"),
        F.col("offset").alias("_kafka_offset"),
        F.col("timestamp").alias("_kafka_timestamp"),
        F.col("_schema_id").cast("int").alias("_schema_id"),
        F.current_timestamp().alias("_ingested_at"),
    ]


def decode(frame: DataFrame, writer: Writer) -> DataFrame:
    """Rows of one writer schema decoded with the contract's reader schema (PERMISSIVE:
    a body that does not decode becomes a record of nulls, see :func:`decoded_ok`)."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import from_avro

    assert writer.event is not None
    options = {"mode": "PERMISSIVE", "avroSchema": writer.event.schema_json}
    body = F.expr("substring(value, 6, length(value) - 5)")
    return frame.select(
        from_avro(body, writer.schema_str, options).alias("_record"), "key", "value", *kafka_metadata()
    )


def decoded_ok(event: EventType) -> Column:
    """True for a row whose body decoded. Spark's PERMISSIVE mode turns a malformed body
    into a record of nulls, so a null in any required (non-nullable) field means failure."""
    from pyspark.sql import functions as F

    required = [f["name"] for f in event.schema["fields"] if not _nullable(f["type"])]
    condition = F.col("_record").isNotNull()
    for name in required:
        condition = condition & F.col(f"_record.{name}").isNotNull()
    return condition


def _nullable(avro_type: Any) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


def to_bronze(decoded: DataFrame, event: EventType) -> DataFrame:
    from pyspark.sql import functions as F

    fields = [F.col(f"_record.{f['name']}").alias(f["name"]) for f in event.schema["fields"]]
    meta = [c for c in decoded.columns if c.startswith("_") and c != "_record"]
    return decoded.where(decoded_ok(event)).select(
        *fields, *meta, F.to_date(F.col(f"_record.{event_time_path(event)}")).alias("event_date")
    )


def quarantine_rows(frame: DataFrame, reason: Column | str, error_type: str) -> DataFrame:
    from pyspark.sql import functions as F

    return frame.select(
        F.lit(error_type).alias("error_type"),
        (F.lit(reason) if isinstance(reason, str) else reason).alias("reason"),
        F.col("_kafka_topic"),
        F.col("_kafka_partition"),
        F.col("_kafka_offset"),
        F.col("_kafka_timestamp"),
        F.col("_schema_id"),
        F.col("key").alias("original_key"),
        F.col("value").alias("original_value"),
        F.col("_ingested_at"),
    )


class TopicIngest:
    """The ``foreachBatch`` body of one topic's query."""

    def __init__(self, topic: str, lake: Lake, writers: WriterCache) -> None:
        self.topic, self.lake, self.writers = topic, lake, writers

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        from pyspark.sql import functions as F

        frame = with_header(batch.select(*KAFKA_COLUMNS)).persist()
        cached = [frame]
        try:
            valid = frame.where(F.col("_magic") == 0)
            ids = sorted(row["_schema_id"] for row in valid.select("_schema_id").distinct().collect())
            bad_header = frame.where(F.col("_magic").isNull() | (F.col("_magic") != 0))
            quarantine = [
                quarantine_rows(
                    bad_header.select("key", "value", *kafka_metadata()),
                    NOT_WIRE_FORMAT_REASON,
                    "not_wire_format",
                )
            ]
            by_event: dict[str, list[DataFrame]] = {}
            for schema_id in ids:
                writer, rows = self.writers.get(schema_id), valid.where(F.col("_schema_id") == schema_id)
                self._split(writer, rows, by_event, quarantine, cached)
            for name, frames in sorted(by_event.items()):
                self._append(self.lake.bronze(name), _union(frames), f"bronze:{self.topic}:{name}", batch_id)
            self._append(
                self.lake.bronze(QUARANTINE), _union(quarantine), f"bronze:{self.topic}:quarantine", batch_id
            )
        finally:
            for frame in cached:
                frame.unpersist()

    def _split(
        self,
        writer: Writer,
        rows: DataFrame,
        by_event: dict[str, list[DataFrame]],
        quarantine: list[DataFrame],
        cached: list[DataFrame],
    ) -> None:
        """Decoded rows to their event type, the rest to quarantine with the reason."""
        from pyspark.sql import functions as F

        if writer.event is None:
            with_meta = rows.select("key", "value", *kafka_metadata())
            quarantine.append(quarantine_rows(with_meta, F.lit(writer.problem), "unknown_schema_id"))
            return
        decoded = decode(rows, writer).persist()
        cached.append(decoded)
        by_event.setdefault(writer.event.name, []).append(to_bronze(decoded, writer.event))
        reason = (
            f"Avro body does not decode with writer schema id {writer.schema_id} ({writer.event.full_name})"
        )
        quarantine.append(
            quarantine_rows(decoded.where(~decoded_ok(writer.event)), F.lit(reason), "undecodable")
        )

    def _append(self, path: str, frame: DataFrame, app_id: str, batch_id: int) -> None:
        count = frame.count()
        if count == 0:
            return
        (
            frame.write.format("delta")
            .mode("append")
            .option("txnAppId", app_id)
            .option("txnVersion", batch_id)
            .option("mergeSchema", "true")
            .partitionBy(*(["event_date"] if "event_date" in frame.columns else []))
            .save(path)
        )
        log.info("batch %s: %s rows to %s", batch_id, count, path)


def _union(frames: list[DataFrame]) -> DataFrame:
    first, *rest = frames
    for frame in rest:
        first = first.unionByName(frame, allowMissingColumns=True)
    return first


def run(
    settings: Settings, spark: SparkSession | None = None, topics: list[str] | None = None
) -> dict[str, Any]:
    """Ingest everything new from every event topic into bronze; returns row counts."""
    contract = Contract(settings.schemas_dir)
    spark = spark or spark_support.session(settings, "reelpulse-bronze")
    lake, writers = Lake(settings.lake_dir), WriterCache(settings, contract)
    names = topics or sorted({e.topic for e in contract if e.topic not in NOT_INGESTED})
    for topic in names:
        ingest = TopicIngest(topic, lake, writers)
        query = (
            read_topic(spark, settings, topic)
            .writeStream.foreachBatch(ingest)
            .option("checkpointLocation", lake.checkpoint(topic))
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
        log.info("bronze: %s caught up", topic)
    return {"topics": names}


NOT_INGESTED = frozenset({"reelpulse.alerts", "reelpulse.deadletter"})
