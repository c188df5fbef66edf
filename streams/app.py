"""The Faust worker: source topics, changelog-backed tables in RocksDB, one thin agent per
source topic, the flush timer that makes progress durable, and the web endpoints.

Agents drain their channel in batches instead of iterating the stream event by event
(``stream.channel.queue``): Faust's per-event stream iterator alone costs more than the
whole throughput budget (see fastpath.py and benchmarks/streams.py). Each message is
acknowledged only after the flush timer has written the state it changed to the tables
(and so to their changelog topics) and Kafka has acknowledged the alerts and dead letters
it caused; Faust commits acknowledged offsets after flushing its producer. That is the
at-least-once guarantee README.md describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from faust.streams import _current_event
from faust.types import TP

from reelpulse import registry
from reelpulse.contract import Contract
from reelpulse.errors import RegistryError
from reelpulse.producer import EventProducer
from reelpulse.settings import Settings, secret_value
from streams import fastpath, sinks, web
from streams.alerts import Fence
from streams.codec import WireDecoder, registry_fetcher
from streams.config import RuleBook, load_rules
from streams.pipeline import Pipeline
from streams.processor import ALL_TABLES, Processor

log = logging.getLogger("streams")

# monitor -> source topic; the playback monitor also counts stream starts and viewers
SOURCES = {"playback": "reelpulse.playback", "cdn": "reelpulse.cdn", "login": "reelpulse.auth"}
ALERT_PRODUCER = {"linger.ms": 5}  # alerts are few and latency matters
FENCE_LOOKBACK_MS = 7 * 24 * 3600 * 1000
REGISTRY_RETRY_S = 2.0
PRODUCER_BUFFER = 20_000  # Faust blocks consumption while more changelog writes wait (default 100)


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker runs (the CLI's options)."""

    app_id: str = "reelpulse-streams"
    monitors: tuple[str, ...] = ("playback", "cdn", "login")
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    rules: Path | None = None
    data_dir: Path | None = None
    start_at: str = "latest"
    flush_interval_s: float = 1.0
    max_batch: int = 5000

    def topics(self) -> list[str]:
        return [SOURCES[m] for m in self.monitors]


@dataclass
class Worker:
    """Everything a running worker holds, for the agents, the timer and the web views."""

    app: faust.App
    options: WorkerOptions
    book: RuleBook
    processor: Processor
    pipeline: Pipeline
    producer: EventProducer
    store: FaustStore
    pending: list[Any] = field(default_factory=list)
    produced: int = 0
    ready: bool = False
    started_positions: dict[str, int] = field(default_factory=dict)


class _Standin:
    """Stands in for Faust's current event while tables are written outside stream
    iteration: Faust takes the changelog partition and the RocksDB partition from
    ``current_event().message``."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = TP(topic, partition)


class FaustStore:
    """The processor's :class:`~streams.processor.Store` over Faust tables."""

    def __init__(self, tables: dict[str, Any], topic: str, partitions: int) -> None:
        self.tables = tables
        self.standins = [_Standin(topic, p) for p in range(partitions)]

    @contextlib.contextmanager
    def writing(self, partition: int) -> Iterator[None]:
        import weakref

        token = _current_event.set(weakref.ref(self.standins[partition]))  # type: ignore[arg-type]
        try:
            yield
        finally:
            _current_event.reset(token)

    def items(self, table: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, value in self.tables[table].items():
            yield (key.decode() if isinstance(key, bytes) else str(key)), value

    def put(self, table: str, key: str, value: dict[str, Any], partition: int) -> None:
        with self.writing(partition):
            self.tables[table][key.encode()] = value

    def delete(self, table: str, key: str, partition: int) -> None:
        with self.writing(partition), contextlib.suppress(KeyError):
            del self.tables[table][key.encode()]


def broker_options(settings: Settings) -> dict[str, Any]:
    """Faust's broker URL and credentials from the shared settings."""
    options: dict[str, Any] = {
        "broker": ";".join(f"kafka://{host}" for host in settings.kafka_bootstrap_servers.split(","))
    }
    protocol = settings.kafka_security_protocol
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_ca_location) if settings.kafka_ssl_ca_location else None
        context = ssl.create_default_context(cafile=cafile)
    if protocol.startswith("SASL"):
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=secret_value(settings.kafka_sasl_password),
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def create_worker(settings: Settings, options: WorkerOptions) -> Worker:
    """Build the Faust app and everything it needs; reads the alerts topic for the fence."""
    fastpath.install()
    book = load_rules(options.rules)
    contract = Contract(settings.schemas_dir)
    data_dir = options.data_dir or settings.state_dir / "streams" / options.app_id
    app = faust.App(
        options.app_id,
        **broker_options(settings),
        store="rocksdb://",
        datadir=str(data_dir),
        autodiscover=False,
        web_enabled=True,
        web_port=options.web_port,
        web_bind=options.web_host,
        web_host=options.web_host,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset=options.start_at,
        processing_guarantee="at_least_once",
        stream_buffer_maxsize=20_000,
        broker_max_poll_records=5000,
        broker_commit_interval=1.0,
        table_standby_replicas=0,
        producer_acks=-1,
    )
    app.producer.buffer.max_messages = PRODUCER_BUFFER  # table flushes come in bursts
    tables = {
        name: app.Table(
            name,
            default=None,
            partitions=settings.topic_partitions,
            key_type=bytes,  # raw keys; values are JSON
        )
        for name in ALL_TABLES
    }
    store = FaustStore(tables, options.topics()[0], settings.topic_partitions)
    processor = Processor(book, store, settings.topic_partitions)
    client = registry.client(settings)
    decoder = WireDecoder(contract, registry_fetcher(client), options.topics())
    producer = EventProducer(settings, contract, config=ALERT_PRODUCER)
    fence = Fence(sinks.notified(settings, decoder_for_alerts(contract, client), FENCE_LOOKBACK_MS))
    worker_ref: list[Worker] = []

    def send(event_type: str) -> Any:
        def produce(record: dict[str, Any]) -> None:
            producer.produce(event_type, record)
            worker_ref[0].produced += 1

        return produce

    pipeline = Pipeline(processor, decoder, fence, send("alert"), send("dead_letter"))
    worker = Worker(app, options, book, processor, pipeline, producer, store)
    worker_ref.append(worker)
    for topic_name in options.topics():
        _agent(worker, topic_name)
    _timers(worker)
    web.register(worker)
    return worker


def decoder_for_alerts(contract: Contract, client: Any) -> WireDecoder:
    return WireDecoder(contract, registry_fetcher(client), ["reelpulse.alerts"])


class Delivered:
    """What a :class:`RawTopic` hands its agent: the consumed message, not yet decoded."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


class RawTopic(faust.Topic):
    """A source topic whose records reach the agent as they were consumed: the pipeline
    decodes them itself, so a record it cannot decode goes to the dead-letter topic with
    its coordinates, and no Faust ``Event`` is built per record."""

    def _compile_decode(self) -> None:
        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return Delivered(message)

        self.decode = decode  # type: ignore[method-assign]


def _agent(worker: Worker, topic_name: str) -> None:
    app = worker.app
    topic = RawTopic(app, topics=[topic_name], key_serializer="raw", value_serializer="raw")
    name = f"monitor-{topic_name.rsplit('.', 1)[-1]}"

    async def consume(stream: Any) -> None:
        queue = stream.channel.queue
        while True:
            try:
                events = [await queue.get()]
            except StopAsyncIteration:  # the channel closes when the worker stops
                return
            while len(events) < worker.options.max_batch:
                try:
                    events.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            if not worker.processor.loaded:
                worker.processor.load()
            messages = [event.message for event in events]
            await _handle(worker, messages)
            worker.pending.extend(messages)

    consume.__name__ = consume.__qualname__ = name.replace("-", "_")
    app.agent(topic, name=name)(consume)


async def _handle(worker: Worker, messages: list[Any]) -> None:
    """Process a batch; while the registry cannot be reached, wait and process it again
    (the records are not at fault, so they are not dead-lettered)."""
    while True:
        try:
            worker.pipeline.handle(messages)
            return
        except RegistryError as error:
            log.error(
                "schema registry unavailable (%s); retrying the batch in %.0fs", error, REGISTRY_RETRY_S
            )
            await asyncio.sleep(REGISTRY_RETRY_S)


def _timers(worker: Worker) -> None:
    app = worker.app

    @app.timer(interval=worker.options.flush_interval_s)
    async def flush() -> None:
        """Make the processed messages durable, then acknowledge them."""
        commit(worker)

    @app.task
    async def readiness() -> None:
        await _wait_ready(worker)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode's stub wants a sync signature
    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        revoked: set[TP] = args[0] if args else set()
        commit(worker)
        gone = {tp.partition for tp in revoked if tp.topic in worker.options.topics()}
        if gone:
            worker.processor.forget_partitions(gone)
            worker.processor.loaded = False


def commit(worker: Worker) -> None:
    """Write changed state to the tables, wait for Kafka to take the alerts and dead
    letters sent so far, then acknowledge every message processed before this call."""
    if not worker.processor.loaded:
        return
    worker.processor.flush()
    if worker.produced:
        worker.producer.flush(30.0)
        worker.produced = 0
    pending, worker.pending = worker.pending, []
    consumer = worker.app.consumer
    for message in pending:
        message.ack(consumer)


async def _wait_ready(worker: Worker) -> None:
    """Ready: table recovery finished and every source partition has a fetch position."""
    app = worker.app
    while not worker.ready:
        await asyncio.sleep(0.2)
        assigned = [tp for tp in app.consumer.assignment() if tp.topic in worker.options.topics()]
        recovered = cast(Any, app.tables).recovery.completed.is_set()
        if not assigned or not recovered or app.rebalancing:
            continue
        positions = {}
        for tp in assigned:
            positions[f"{tp.topic}:{tp.partition}"] = await app.consumer.position(tp)
        if not worker.processor.loaded:
            worker.processor.load()
        worker.started_positions = {k: int(v or 0) for k, v in positions.items()}
        worker.ready = True
        log.info("worker ready: %d source partitions, positions %s", len(assigned), positions)


def run(worker: Worker, loglevel: str = "info") -> None:
    """Run the worker until it is stopped (SIGTERM/SIGINT stop it cleanly)."""
    from faust.worker import Worker as FaustWorker
    from mode.utils.logging import level_number

    class _Worker(FaustWorker):
        def _setup_logging(self) -> None:
            super()._setup_logging()
            # mode leaves the root logger at DEBUG and filters in its handler, so every
            # debug call in aiokafka and Faust built a log record (4 % of the CPU time)
            level = logging.CRITICAL if loglevel == "crit" else level_number(loglevel)
            logging.getLogger().setLevel(level)

    _Worker(worker.app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()
