"""Bronze: every event topic into Delta, decoded by schema id, exactly once.

One Structured Streaming query per topic, ``trigger(availableNow=True)`` with its own
checkpoint: each run ingests what is new and stops. The topics' queries run at the same
time in one Spark session, so the fixed cost of each micro-batch (planning, the Kafka
metadata, the Delta commits, all on the driver) overlaps with the other topics' decoding
and writing on the executors' cores. Each micro-batch is decoded by the
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
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka.schema_registry.error import SchemaRegistryError

from batch import spark as spark_support
from batch.lake import Lake
from reelpulse import registry
from reelpulse.contract import Contract, EventType
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("reelpulse.batch.bronze")

KAFKA_COLUMNS = ("topic", "partition", "offset", "timestamp", "key", "value")
NOT_WIRE_FORMAT_REASON = "value is not in the Confluent wire format (magic byte 0 + 4-byte schema id)"
QUARANTINE = "_quarantine"
# What a FAILFAST decode of a body that does not decode fails with (Spark 4.2).
MALFORMED = "Malformed records are detected in record parsing"
# Statistics only on the columns readers filter bronze by (silver's high-water marks, the
# ingest and Kafka times); the default, the first 32 leaf columns, costs a third of a write.
TABLE_PROPERTIES = {
    "delta.dataSkippingStatsColumns": "_kafka_partition,_kafka_offset,_kafka_timestamp,_ingested_at"
}


# Bronze's session options, set for a run and then put back. The micro-batch is cached
# uncompressed: its columns are mostly Avro bodies that do not compress, and the encoders
# that try to cost more than they save. A micro-batch spans a day or two of event dates:
# each task writes every date it meets into a file of its own (up to 8 open at once)
# instead of first sorting its rows by date. Bronze is written once and read once, by
# silver's incremental pass, so it skips dictionary encoding (a tenth of the ingest's CPU;
# the files come out about half as large again); OPTIMIZE, which runs with the session's
# defaults, rewrites compacted files with them.
RUN_CONF = {
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
    "spark.sql.maxConcurrentOutputFileWriters": "8",
    "parquet.enable.dictionary": "false",
}


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
        self.lock = threading.Lock()  # the topics' queries ask from threads of their own

    def get(self, schema_id: int) -> Writer:
        with self.lock:
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
    """Add ``_magic`` and ``_schema_id`` parsed from the 5-byte wire-format header, and
    ``_ingested_at``: one time for the whole batch."""
    from pyspark.sql import functions as F

    magic = F.expr("CASE WHEN length(value) >= 5 THEN conv(hex(substring(value, 1, 1)), 16, 10) END")
    schema_id = F.conv(F.hex(F.expr("substring(value, 2, 4)")), 16, 10)
    return frame.select(
        "*",
        magic.cast("int").alias("_magic"),
        schema_id.cast("long").alias("_schema_id"),
        F.current_timestamp().alias("_ingested_at"),
    )


def kafka_metadata() -> list[Column]:
    from pyspark.sql import functions as F

    return [
        F.col("topic").alias("_kafka_topic"),
        F.col("partition").alias("_kafka_partition"),
        F.col("offset").alias("_kafka_offset"),
        F.col("timestamp").alias("_kafka_timestamp"),
        F.col("_schema_id").cast("int").alias("_schema_id"),
        F.col("_ingested_at"),
    ]


def decode(frame: DataFrame, writer: Writer, mode: str) -> DataFrame:
    """Rows of one writer schema decoded with the contract's reader schema. ``FAILFAST``
    fails the job on a body that does not decode (its error names ``MALFORMED``);
    ``PERMISSIVE`` turns such a body into a record of nulls, see :func:`decoded_ok`."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import from_avro

    assert writer.event is not None
    options = {"mode": mode, "avroSchema": writer.event.schema_json}
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
    """Bronze rows of decoded records: the record's fields, the Kafka metadata and the
    event date. No filter here: a FAILFAST decode holds only records that decoded, and a
    filter on ``_record`` over an unpersisted decode would decode every body twice (the
    optimizer pushes it below the projection, copying ``from_avro`` into it)."""
    from pyspark.sql import functions as F

    fields = [F.col(f"_record.{f['name']}").alias(f["name"]) for f in event.schema["fields"]]
    meta = [c for c in decoded.columns if c.startswith("_") and c != "_record"]
    return decoded.select(
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
    """The ``foreachBatch`` body of one topic's query.

    The batch's raw records are cached once and counted by wire-format header and schema
    id in one pass. Each event type is then decoded and written in one pass with
    ``FAILFAST`` decoding: in the common case, where every body decodes, a record is
    decoded once and never counted again. Only when a body fails to decode is that event
    type redone in ``PERMISSIVE`` mode, which splits it into bronze rows and quarantine.

    A topic's event types are written ``threads`` at a time, the largest
    first: one event type's write is a Spark job of one task per Kafka partition, so
    alone it leaves cores idle while its last task runs; the next event type's tasks fill
    them. Every write is idempotent (``txnAppId``/``txnVersion``), so when one fails the
    batch is replayed and the event types already written are skipped.
    """

    def __init__(
        self,
        topic: str,
        lake: Lake,
        writers: WriterCache,
        quarantine_lock: threading.Lock | None = None,
        threads: int = 1,
    ) -> None:
        self.topic, self.lake, self.writers, self.threads = topic, lake, writers, threads
        # Every topic's query appends to the one quarantine table: one at a time, so that two
        # first appends never race to create it.
        self.quarantine_lock = quarantine_lock or threading.Lock()
        self.rows: Counter[str] = Counter()  # rows appended per bronze table (a replayed batch too)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        # Sorted by schema id within each partition (one key: a radix sort), the cache's column
        # batches each hold one schema id, so an event type's scan skips the batches of the others.
        frame = with_header(batch.select(*KAFKA_COLUMNS)).sortWithinPartitions("_schema_id").persist()
        cached: list[DataFrame] = [frame]
        try:
            by_event, quarantine = self._route(frame)
            for written in self._ingest_all(list(by_event.values()), batch_id):
                self.rows[written.table] += written.rows
                quarantine.extend(written.quarantine)
                cached.extend(written.cached)
            if quarantine:
                path, app_id = self.lake.bronze(QUARANTINE), f"bronze:{self.topic}:quarantine"
                rows = _union(quarantine)
                with self.quarantine_lock:
                    self.rows[QUARANTINE] += self._append(path, rows, app_id, batch_id, rows.count())
        finally:
            for each in cached:
                each.unpersist()

    def _route(self, frame: DataFrame) -> tuple[dict[str, list[Part]], list[DataFrame]]:
        """Count the batch by header and schema id (one pass); group the decodable rows by
        event type and quarantine bad headers and unknown schema ids."""
        from pyspark.sql import functions as F

        wire = F.coalesce(F.col("_magic") == 0, F.lit(False))
        counts = frame.groupBy(wire.alias("wire"), "_schema_id").count().collect()
        by_event: dict[str, list[Part]] = {}
        quarantine: list[DataFrame] = []
        if any(not row["wire"] for row in counts):
            rows = frame.where(~wire).select("key", "value", *kafka_metadata())
            quarantine.append(quarantine_rows(rows, NOT_WIRE_FORMAT_REASON, "not_wire_format"))
        for row in sorted((r for r in counts if r["wire"]), key=lambda r: int(r["_schema_id"])):
            writer = self.writers.get(int(row["_schema_id"]))
            rows = frame.where(wire & (F.col("_schema_id") == writer.schema_id))
            if writer.event is None:
                meta = rows.select("key", "value", *kafka_metadata())
                quarantine.append(quarantine_rows(meta, F.lit(writer.problem), "unknown_schema_id"))
            else:
                by_event.setdefault(writer.event.name, []).append(Part(writer, rows, int(row["count"])))
        return by_event, quarantine

    def _ingest_all(self, event_types: list[list[Part]], batch_id: int) -> list[Written]:
        """Write every event type, ``threads`` at a time, the largest first. Once a write
        fails no other begins; those running finish, and the first error is raised."""
        largest_first = sorted(event_types, key=lambda parts: -sum(p.count for p in parts))
        if self.threads <= 1 or len(largest_first) <= 1:
            return [self._ingest(parts, batch_id) for parts in largest_first]
        failed = threading.Event()

        def write(parts: list[Part]) -> Written | None:
            if failed.is_set():
                return None
            try:
                return self._ingest(parts, batch_id)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(self.threads, thread_name_prefix=f"bronze-{self.topic}") as pool:
            futures = [pool.submit(write, parts) for parts in largest_first]
        errors = [error for error in (future.exception() for future in futures) if error is not None]
        written = [w for w in (f.result() for f in futures if f.exception() is None) if w is not None]
        if errors:
            for each in written:  # the batch fails: release what the PERMISSIVE redos cached
                for frame in each.cached:
                    frame.unpersist()
            raise errors[0]
        return written

    def _ingest(self, parts: list[Part], batch_id: int) -> Written:
        """Write one event type's rows, with quarantine frames of the bodies that failed."""
        event = parts[0].event
        path, app_id = self.lake.bronze(event.name), f"bronze:{self.topic}:{event.name}"
        strict = _union([to_bronze(decode(p.rows, p.writer, "FAILFAST"), event) for p in parts])
        try:
            rows = self._append(path, strict, app_id, batch_id, sum(p.count for p in parts))
            return Written(event.name, rows)
        except Exception as error:  # only a body that fails to decode is handled here
            if MALFORMED not in str(error):
                raise
        log.warning("batch %s: %s has bodies that do not decode; quarantining them", batch_id, event.name)
        decoded = [(p.writer, decode(p.rows, p.writer, "PERMISSIVE").persist()) for p in parts]
        frames = [frame for _, frame in decoded]
        try:
            lenient = _union([to_bronze(frame.where(decoded_ok(event)), event) for frame in frames])
            rows = self._append(path, lenient, app_id, batch_id, lenient.count())
        except Exception:
            for frame in frames:
                frame.unpersist()
            raise
        return Written(event.name, rows, [undecodable(frame, writer) for writer, frame in decoded], frames)

    def _append(self, path: str, frame: DataFrame, app_id: str, batch_id: int, rows: int) -> int:
        """Append ``frame`` (``rows`` rows) once per batch id; returns ``rows``."""
        partitioning = ["event_date"] if "event_date" in frame.columns else []
        (
            frame.write.format("delta")
            .mode("append")
            .option("txnAppId", app_id)
            .option("txnVersion", batch_id)
            .option("mergeSchema", "true")
            .options(**TABLE_PROPERTIES)
            .partitionBy(*partitioning)
            .save(path)
        )
        log.info("batch %s: %s rows to %s", batch_id, rows, path)
        return rows


@dataclass(frozen=True)
class Written:
    """What writing one event type of a batch did: rows appended to its table, quarantine
    frames of bodies that did not decode, and the frames cached to split them."""

    table: str
    rows: int
    quarantine: list[DataFrame] = field(default_factory=list)
    cached: list[DataFrame] = field(default_factory=list)


@dataclass(frozen=True)
class Part:
    """The rows of one batch written with one schema id, and how many there are."""

    writer: Writer
    rows: DataFrame
    count: int

    @property
    def event(self) -> EventType:
        assert self.writer.event is not None
        return self.writer.event


def undecodable(decoded: DataFrame, writer: Writer) -> DataFrame:
    """The rows of a PERMISSIVE decode whose body did not decode, as quarantine rows."""
    from pyspark.sql import functions as F

    assert writer.event is not None
    reason = f"Avro body does not decode with writer schema id {writer.schema_id} ({writer.event.full_name})"
    return quarantine_rows(decoded.where(~decoded_ok(writer.event)), F.lit(reason), "undecodable")


def _union(frames: list[DataFrame]) -> DataFrame:
    first, *rest = frames
    for frame in rest:
        first = first.unionByName(frame, allowMissingColumns=True)
    return first


def run(
    settings: Settings,
    spark: SparkSession | None = None,
    topics: list[str] | None = None,
) -> dict[str, Any]:
    """Ingest everything new from every event topic into bronze; the topics' queries run
    at the same time. Returns the topics read
    and, per bronze table this run appended rows to (``_quarantine`` included), how many.
    When a query fails, the others are stopped (what they committed stays, exactly once)
    and its error is raised."""
    contract = Contract(settings.schemas_dir)
    spark = spark or spark_support.session(settings, "reelpulse-bronze")
    lake, writers = Lake(settings.lake_dir), WriterCache(settings, contract)
    names = topics or sorted({e.topic for e in contract if e.topic not in NOT_INGESTED})
    quarantine_lock, threads = threading.Lock(), settings.bronze_writer_threads
    ingests = [TopicIngest(topic, lake, writers, quarantine_lock, threads) for topic in names]
    queries: list[StreamingQuery] = []
    # RUN_CONF for bronze only: the caller's session gets its settings back after.
    with spark_support.session_conf(spark, RUN_CONF):
        try:
            for ingest in ingests:  # one at a time: a query that fails to start stops those started
                queries.append(_start(spark, settings, lake, ingest))
            for query, ingest in zip(queries, ingests, strict=True):
                query.awaitTermination()
                log.info("bronze: %s caught up", ingest.topic)
        finally:
            for query in queries:
                if query.isActive:
                    query.stop()
    rows: Counter[str] = Counter()
    for ingest in ingests:
        rows.update(ingest.rows)
    return {"topics": names, "rows": {table: n for table, n in sorted(rows.items()) if n}}


def _start(spark: SparkSession, settings: Settings, lake: Lake, ingest: TopicIngest) -> StreamingQuery:
    return (
        read_topic(spark, settings, ingest.topic)
        .writeStream.foreachBatch(ingest)
        .queryName(f"bronze-{ingest.topic}")
        .option("checkpointLocation", lake.checkpoint(ingest.topic))
        .trigger(availableNow=True)
        .start()
    )


NOT_INGESTED = frozenset({"reelpulse.alerts", "reelpulse.deadletter"})
