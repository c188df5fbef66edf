"""Producer throughput: how fast one Python process turns heartbeats into acknowledged
Kafka records, next to Kafka's own ProducerPerformance on the same broker.

Run ``python -m benchmarks.producer`` (``--help`` lists the options). It starts a
private Kafka + registry on free ports (or uses ``--bootstrap``/``--registry``), and
in one run measures, for the same ``playback_heartbeat`` records:

1. ``contract.encode`` alone (and ``EventType.check`` alone, for reference);
2. ``EventProducer(validate=True)``: validate + encode + produce, then flush;
3. ``EventProducer(validate=False)``: encode + produce, then flush;
4. ``org.apache.kafka.tools.ProducerPerformance`` with the same count, the average
   encoded size and the same producer settings (acks=all, idempotent, lz4).

Phases 2 and 3 each run in a fresh process, whose RSS is sampled while it produces.
Each phase writes to its own new topic, whose message count is checked afterwards.
Results go to ``artifacts/bench/producer.json``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import platform
import queue
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import confluent_kafka
import psutil
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from reelpulse import registry, stack, topics
from reelpulse.codec import compile_codec
from reelpulse.contract import Contract, EventType, TopicSpec, encode
from reelpulse.producer import PRODUCER_DEFAULTS, EventProducer
from reelpulse.settings import PROJECT_ROOT, Settings
from reelpulse.testing import stack_settings

log = logging.getLogger("benchmarks.producer")
console = Console()

EVENT = "playback_heartbeat"
RESULTS_PATH = PROJECT_ROOT / "artifacts" / "bench" / "producer.json"
BENCH_ROOT = Path(tempfile.gettempdir()) / "reelpulse-bench"
TARGET_RATE = 100_000
TARGET_RATIO = 0.25
TARGET_LINE = "target: >= 100,000 events/s from one Python process; ratio goal >= 25%"
MIB = 1024 * 1024
CHUNK = 5_000
RSS_SAMPLE_S = 0.02
SEED = 20_260_101
SESSIONS = 5_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, so every run encodes the same bytes
# The Java producer gets the settings EventProducer uses by default.
JAVA_PROPS = ("acks", "enable.idempotence", "compression.type", "linger.ms", "batch.size")
JAVA_HEAP = "-Xmx512M"  # what kafka-producer-perf-test.sh gives the tool
PERF_TOTAL = re.compile(
    r"^(?P<count>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mib>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th"
)
PERF_WINDOW = re.compile(r"^(?P<count>\d+) records sent, .* max latency\.$")
NOTES = (
    "MB/s is MiB/s of record values (5-byte header + Avro body), as ProducerPerformance counts "
    "its payload; our 36-byte keys are not counted (ProducerPerformance sends no key).",
    "'vs Kafka' is events/s over ProducerPerformance's records/s. Its clock starts after its "
    "producer is created and stops after close(); ours after EventProducer() and after flush().",
    "ProducerPerformance sends fresh random uppercase letters per record, which lz4 barely "
    "compresses; our heartbeats repeat ids and strings and compress far better, so the broker "
    "and network carry fewer bytes for us.",
    "Rates include the final flush (every record acknowledged with acks=all).",
    "Broker, registry and producer share this machine's cores; expect run-to-run noise.",
)


class BenchmarkError(RuntimeError):
    """A phase did not do what it measures: a failed child, lost records, a tool error."""


# --------------------------------------------------------------------------- records


RENDITIONS = (
    (235, "P240"),
    (750, "P360"),
    (1_750, "P480"),
    (3_000, "P720"),
    (5_800, "P1080"),
    (16_000, "P2160"),
)
DEVICES = (
    ("TV", "Tizen 8.0"),
    ("MOBILE", "Android 15"),
    ("MOBILE", "iOS 18.2"),
    ("TABLET", "iPadOS 18.2"),
    ("WEB", "Chrome 131"),
    ("CONSOLE", "PlayStation 5"),
    ("STREAMING_STICK", "Fire OS 8"),
)
COUNTRIES = ("US", "US", "US", "GB", "DE", "FR", "BR", "IN", "JP", "CA", "MX", "ES")
EDGES = tuple(
    f"edge-{city}-{n:02d}" for city in ("iad", "sjc", "fra", "lhr", "gru", "nrt") for n in range(1, 9)
)


@dataclass
class Session:
    """A playback session: what stays the same across its heartbeats."""

    envelope: dict[str, Any]
    title_id: str
    cdn_edge: str
    rendition: int
    position_ms: int = 0


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _session(rng: random.Random) -> Session:
    account = rng.randrange(10_000_000)
    device_type, os_name = rng.choice(DEVICES)
    envelope = {
        "user_id": f"acct-{account:08d}",
        "profile_id": f"prof-{account:08d}-{rng.randrange(1, 6)}",
        "session_id": _uuid(rng),
        "device": {
            "device_id": f"dev-{rng.getrandbits(64):016x}",
            "device_type": device_type,
            "os": os_name,
            "app_version": f"5.{rng.randrange(8, 13)}.{rng.randrange(4)}",
        },
        "country": rng.choice(COUNTRIES),
        "client_ip": ".".join(str(rng.randrange(1, 224 if i == 0 else 255)) for i in range(4)),
    }
    return Session(
        envelope, f"tt{rng.randrange(100_000):07d}", rng.choice(EDGES), rng.randrange(2, len(RENDITIONS))
    )


def _heartbeat(rng: random.Random, session: Session, event_time: int) -> dict[str, Any]:
    interval = rng.randint(9_500, 10_500)
    session.position_ms += interval
    stalls = 1 if rng.random() < 0.03 else 0
    bitrate, resolution = RENDITIONS[session.rendition]
    return {
        "envelope": {**session.envelope, "event_id": _uuid(rng), "event_time": event_time},
        "title_id": session.title_id,
        "position_ms": session.position_ms,
        "interval_ms": interval,
        "bitrate_kbps": bitrate,
        "resolution": resolution,
        "buffer_ms": rng.randint(2_000, 30_000),
        "rebuffer_count": stalls,
        "rebuffer_ms": stalls * rng.randint(200, 4_000),
        "dropped_frames": rng.choice((0, 0, 0, 0, 0, 1, 2, 7)),
        "cdn_edge": session.cdn_edge,
    }


def make_records(count: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Heartbeats of ``SESSIONS`` concurrent sessions; the same seed gives the same records."""
    rng = random.Random(seed)
    sessions = [_session(rng) for _ in range(min(SESSIONS, count))]
    return [_heartbeat(rng, rng.choice(sessions), START_MS + i * 2) for i in range(count)]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Rate:
    """One measured phase: how many events and value bytes in how many seconds."""

    name: str
    events: int
    value_bytes: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def mib_per_s(self) -> float:
        return self.value_bytes / self.seconds / MIB

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "events_per_s": round(self.events_per_s, 1),
            "mib_per_s": round(self.mib_per_s, 3),
        }


@dataclass(frozen=True)
class PhaseSpec:
    """What a producer phase's child process needs (picklable)."""

    name: str
    settings: dict[str, Any]
    topic: str
    schema_id: int
    events: int
    value_bytes: int
    validate: bool


# --------------------------------------------------------------------------- in-process phases


def timed_loop(
    name: str,
    records: Sequence[dict[str, Any]],
    step: Callable[[dict[str, Any]], int],
    advance: Callable[[int], None],
) -> Rate:
    """Time ``step`` over every record; ``step`` returns the value bytes it handled."""
    total = 0
    start = time.perf_counter()
    for begin in range(0, len(records), CHUNK):
        chunk = records[begin : begin + CHUNK]
        for record in chunk:
            total += step(record)
        advance(len(chunk))
    return Rate(name, len(records), total, time.perf_counter() - start)


def bench_encode(
    event: EventType, schema_id: int, records: Sequence[dict[str, Any]], progress: Progress
) -> Rate:
    task = progress.add_task("1. validate + encode (codec)", total=len(records))
    codec = compile_codec(event, schema_id)
    assert codec is not None, f"{event.name} has no generated codec"
    return timed_loop(
        "validate + encode (codec, the producer's path)",
        records,
        lambda r: len(codec(r) or b""),
        lambda n: progress.advance(task, n),
    )


def bench_contract_path(
    event: EventType, schema_id: int, records: Sequence[dict[str, Any]], progress: Progress
) -> Rate:
    """The contract's path, the baseline the codec replaces: fastavro validate, then encode."""
    task = progress.add_task("   check + encode (fastavro)", total=len(records))
    parsed = event.parsed

    def check_and_encode(record: dict[str, Any]) -> int:
        event.check(record)
        return len(encode(schema_id, parsed, record))

    name = "check + encode (fastavro, the contract's path)"
    return timed_loop(name, records, check_and_encode, lambda n: progress.advance(task, n))


# --------------------------------------------------------------------------- producer phases


class RssSampler(threading.Thread):
    """Samples this process's resident set size until stopped; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def finish(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def bench_contract(settings: Settings, topic: str) -> Contract:
    """The project's contract with the heartbeat event moved to a benchmark topic."""
    contract = Contract(settings.schemas_dir)
    schema = {**contract[EVENT].schema, "reelpulse.topic": topic}
    contract.events[EVENT] = EventType(EVENT, schema)
    return contract


def producer_phase(spec: PhaseSpec, updates: Any) -> None:
    """Child process body: build the records, then produce them all and flush."""
    try:
        updates.put(("result", _produce(spec, updates)))
    except BaseException:
        updates.put(("error", traceback.format_exc()))
        raise


def _produce(spec: PhaseSpec, updates: Any) -> dict[str, Any]:
    settings = Settings(**spec.settings)
    records = make_records(spec.events)
    contract = bench_contract(settings, spec.topic)
    baseline = psutil.Process().memory_info().rss
    sampler = RssSampler()
    sampler.start()
    producer = EventProducer(settings, contract, schema_ids={EVENT: spec.schema_id}, validate=spec.validate)

    def produce(record: dict[str, Any]) -> int:
        producer.produce(EVENT, record)
        return 0

    rate = timed_loop(spec.name, records, produce, lambda n: updates.put(("advance", n)))
    flush_start = time.perf_counter()
    producer.flush()
    seconds = rate.seconds + time.perf_counter() - flush_start
    peak = sampler.finish()
    return {
        "seconds": seconds,
        "enqueue_seconds": rate.seconds,
        "acked": producer.stats.acked,
        "failed": producer.stats.failed,
        "rss_before_bytes": baseline,
        "rss_peak_bytes": peak,
    }


def run_phase(spec: PhaseSpec, progress: Progress, label: str) -> Rate:
    """Run one producer phase in a fresh process, showing its progress."""
    task = progress.add_task(label, total=spec.events)
    updates = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(
        target=producer_phase, args=(spec, updates), name=f"bench-{spec.name}"
    )
    child.start()
    try:
        result = _follow(child, updates, lambda n: progress.advance(task, n))
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()
            child.join()
    if result["acked"] != spec.events or result["failed"]:
        raise BenchmarkError(
            f"{spec.name}: {result['acked']} of {spec.events} acknowledged, {result['failed']} failed"
        )
    seconds = result.pop("seconds")
    return Rate(spec.name, spec.events, spec.value_bytes, seconds, result)


def _follow(child: Any, updates: Any, advance: Callable[[int], None]) -> dict[str, Any]:
    while True:
        try:
            kind, payload = updates.get(timeout=0.5)
        except queue.Empty:
            if not child.is_alive():
                raise BenchmarkError(f"{child.name} exited with code {child.exitcode}") from None
            continue
        if kind == "advance":
            advance(payload)
        elif kind == "error":
            raise BenchmarkError(f"{child.name} failed:\n{payload}")
        else:
            return dict(payload)


# --------------------------------------------------------------------------- ProducerPerformance


def java_producer_props(settings: Settings) -> list[str]:
    props = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
        **{key: PRODUCER_DEFAULTS[key] for key in JAVA_PROPS},
    }
    return [
        f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in props.items()
    ]


def perf_command(settings: Settings, topic: str, events: int, record_size: int) -> list[str]:
    classpath = str(stack.component_dir(settings, "kafka") / "*")
    return [
        stack.java(settings),
        JAVA_HEAP,
        "-cp",
        classpath,
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(events),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        *java_producer_props(settings),
    ]


def bench_kafka(settings: Settings, topic: str, events: int, record_size: int, progress: Progress) -> Rate:
    """Run ProducerPerformance and parse its summary line."""
    task = progress.add_task("4. Kafka ProducerPerformance", total=events)
    stack.fetch_jars(settings, "kafka")  # already there unless the stack is not ours
    command = perf_command(settings, topic, events, record_size)
    started = time.perf_counter()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    ) as process:
        output = _read_perf_output(process, lambda n: progress.advance(task, n))
    wall = time.perf_counter() - started
    total = next((m for line in reversed(output) if (m := PERF_TOTAL.match(line))), None)
    if process.returncode != 0 or total is None:
        raise BenchmarkError(
            f"ProducerPerformance failed (exit {process.returncode}):\n" + "\n".join(output[-30:])
        )
    progress.update(task, completed=events)
    rate = float(total["rate"])
    extra = {
        "reported_records_per_s": rate,
        "reported_mib_per_s": float(total["mib"]),
        "avg_latency_ms": float(total["avg"]),
        "max_latency_ms": float(total["max"]),
        "p50_ms": int(total["p50"]),
        "p95_ms": int(total["p95"]),
        "p99_ms": int(total["p99"]),
        "wall_seconds_with_jvm_start": round(wall, 2),
        "summary": total.group(0),
        "command": " ".join(command),
    }
    return Rate(
        "Kafka ProducerPerformance",
        int(total["count"]),
        int(total["count"]) * record_size,
        int(total["count"]) / rate,
        extra,
    )


def _read_perf_output(process: subprocess.Popen[str], advance: Callable[[int], None]) -> list[str]:
    lines = []
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.rstrip()
        lines.append(line)
        if window := PERF_WINDOW.match(line):
            advance(int(window["count"]))
    process.wait()
    return lines


# --------------------------------------------------------------------------- the stack


def prepare_state_dir(state_dir: Path | None) -> Path:
    """The stack's state dir (default: a new one under /tmp; jars come from the shared cache)."""
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir or Path(tempfile.mkdtemp(prefix="run-", dir=BENCH_ROOT))
    state_dir.mkdir(parents=True, exist_ok=True)
    return state_dir


@contextmanager
def bench_stack(
    bootstrap: str | None, registry_url: str | None, state_dir: Path | None, keep: bool
) -> Iterator[Settings]:
    """Settings of a running stack: the one given, or one started here (and stopped after)."""
    if bootstrap or registry_url:
        if not (bootstrap and registry_url):
            raise typer.BadParameter("give both --bootstrap and --registry, or neither")
        yield Settings(kafka_bootstrap_servers=bootstrap, schema_registry_url=registry_url)
        return
    created = state_dir is None
    settings = stack_settings(prepare_state_dir(state_dir), kafka_heap="512m", registry_heap="384m")
    if any(stack.running_pid(service, settings) for service in stack.SERVICES):
        raise typer.BadParameter(
            f"a stack already runs from {settings.state_dir}; pass its "
            "--bootstrap and --registry, or another --state-dir"
        )
    ok = False
    try:
        with console.status(f"starting Kafka and the registry (state: {settings.state_dir})"):
            stack.up(settings)
        yield settings
        ok = True
    finally:
        _release(settings, keep=keep, remove=created and ok)


def _release(settings: Settings, *, keep: bool, remove: bool) -> None:
    if keep:
        console.print(
            f"[bold]stack kept[/]: --bootstrap {settings.kafka_bootstrap_servers} "
            f"--registry {settings.schema_registry_url}\n"
            f"  stop it with: REELPULSE_STATE_DIR={settings.state_dir} reelpulse down"
        )
        return
    with console.status("stopping the stack"):
        stack.down(settings)
    if remove:
        shutil.rmtree(settings.state_dir, ignore_errors=True)
    else:
        console.print(f"stack stopped; logs kept in {settings.state_dir / 'logs'}")


def create_topics(settings: Settings, names: Sequence[str]) -> None:
    specs = [TopicSpec(name, retention_ms=3_600_000, description="benchmark") for name in names]
    topics.ensure_topics(settings, specs)


def register_topics(settings: Settings, names: Sequence[str]) -> dict[str, int]:
    """Register the heartbeat schema under each benchmark topic's subject."""
    client = registry.client(settings)
    return {name: registry.register(client, bench_contract(settings, name)[EVENT]) for name in names}


def drop_topics(settings: Settings, names: Sequence[str]) -> None:
    """Delete the benchmark topics from a stack this run did not start."""
    client = topics.admin(settings)  # keep the client alive until every future is done
    for future in client.delete_topics(list(names), operation_timeout=30).values():
        future.result()


# --------------------------------------------------------------------------- report


def percent(ratio: float) -> str:
    """One decimal, rounded down: 24.96% shows as 24.9%, never as a passing 25.0%."""
    return f"{math.floor(ratio * 1000) / 10:.1f}%"


def verdict(ok: bool) -> str:
    return "[green]PASS[/]" if ok else "[red]MISS[/]"


def results_table(rates: list[Rate], kafka: Rate) -> Table:
    table = Table(title=f"producer benchmark: {kafka.events:,} playback_heartbeat events")
    for column in ("phase", "events/s", "MB/s", "seconds", "vs Kafka", "peak RSS"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for rate in rates:
        rss = rate.extra.get("rss_peak_bytes")
        ratio = percent(rate.events_per_s / kafka.events_per_s) if rss else ""
        table.add_row(
            rate.name,
            f"{rate.events_per_s:,.0f}",
            f"{rate.mib_per_s:.2f}",
            f"{rate.seconds:.2f}",
            ratio,
            f"{rss / MIB:,.0f} MiB" if rss else "",
        )
    return table


def target_lines(producer_rates: list[Rate], kafka: Rate) -> list[str]:
    lines = [TARGET_LINE]
    for rate in producer_rates:
        ratio = rate.events_per_s / kafka.events_per_s
        lines.append(
            f"  {rate.name}: {rate.events_per_s:,.0f} events/s "
            f"{verdict(rate.events_per_s >= TARGET_RATE)}, ratio {percent(ratio)} "
            f"{verdict(ratio >= TARGET_RATIO)}"
        )
    return lines


def target_results(producer_rates: list[Rate], kafka: Rate) -> dict[str, Any]:
    out: dict[str, Any] = {"line": TARGET_LINE}
    for rate in producer_rates:
        ratio = rate.events_per_s / kafka.events_per_s
        out[rate.name] = {
            "events_per_s": round(rate.events_per_s, 1),
            "ratio": round(ratio, 4),
            "rate_pass": rate.events_per_s >= TARGET_RATE,
            "ratio_pass": ratio >= TARGET_RATIO,
        }
    return out


def report(rates: list[Rate], kafka: Rate, counts: dict[str, int], record_size: float) -> None:
    producers = [rate for rate in rates if "rss_peak_bytes" in rate.extra]
    console.print(results_table([*rates, kafka], kafka))
    for rate in producers:
        extra = rate.extra
        console.print(
            f"  {rate.name}: RSS {extra['rss_before_bytes'] / MIB:,.0f} MiB with "
            f"the records loaded, peak {extra['rss_peak_bytes'] / MIB:,.0f} MiB while "
            f"producing; enqueue took {extra['enqueue_seconds']:.2f}s "
            f"of {rate.seconds:.2f}s"
        )
    console.print(f"  ProducerPerformance: {kafka.extra['summary']}")
    console.print(
        f"average encoded record: {record_size:.1f} bytes; topic message counts "
        "(end - start offsets): " + ", ".join(f"{name} = {count:,}" for name, count in counts.items())
    )
    for line in target_lines(producers, kafka):
        console.print(line)
    console.print("notes:\n" + "\n".join(f"  - {note}" for note in NOTES))


def write_results(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"results written to {path}")


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": psutil.cpu_count(),
        "machine": platform.machine(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "producer_config": PRODUCER_DEFAULTS,
    }


# --------------------------------------------------------------------------- the run


def make_progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def run(settings: Settings, events: int, drop: bool) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    names = {phase: f"bench.heartbeats-{run_id}-{phase}" for phase in ("validated", "trusted", "kafka")}
    create_topics(settings, list(names.values()))
    schema_ids = register_topics(settings, [names["validated"], names["trusted"]])
    with console.status(f"building {events:,} heartbeat records"):
        records = make_records(events)
    event = bench_contract(settings, names["validated"])[EVENT]
    with make_progress() as progress:
        encoded = bench_encode(event, schema_ids[names["validated"]], records, progress)
        checked = bench_contract_path(event, schema_ids[names["validated"]], records, progress)
        del records
        producers = [
            run_phase(_spec(settings, names, schema_ids, encoded, validate), progress, label)
            for validate, label in (
                (True, "2. EventProducer validate=True"),
                (False, "3. EventProducer validate=False"),
            )
        ]
        record_size = round(encoded.value_bytes / encoded.events)
        kafka = bench_kafka(settings, names["kafka"], events, record_size, progress)
    counts = {s.name: s.messages for s in topics.topic_states(settings, list(names.values()))}
    _check_counts(counts, names, events)
    report([encoded, checked, *producers], kafka, counts, encoded.value_bytes / encoded.events)
    if drop:
        drop_topics(settings, list(names.values()))
    phases = [r.as_dict() for r in (encoded, checked, *producers, kafka)]
    return {
        "events": events,
        "average_record_bytes": encoded.value_bytes / encoded.events,
        "topics": counts,
        "phases": phases,
        "targets": target_results(producers, kafka),
        "notes": list(NOTES),
    }


def _spec(
    settings: Settings, names: dict[str, str], schema_ids: dict[str, int], encoded: Rate, validate: bool
) -> PhaseSpec:
    phase = "validated" if validate else "trusted"
    overrides = settings.model_dump(
        include={
            "kafka_bootstrap_servers",
            "kafka_controller_port",
            "schema_registry_url",
            "registry_management_port",
            "state_dir",
            "jar_cache",
        }
    )
    return PhaseSpec(
        f"produce, {phase}",
        overrides,
        names[phase],
        schema_ids[names[phase]],
        encoded.events,
        encoded.value_bytes,
        validate,
    )


def _check_counts(counts: dict[str, int], names: dict[str, str], events: int) -> None:
    wrong = {name: counts.get(name, 0) for name in names.values() if counts.get(name, 0) != events}
    if wrong:
        raise BenchmarkError(f"topics do not hold {events:,} messages each: {wrong}")


app = typer.Typer(add_completion=False)
HELP_STATE_DIR = "State dir of the started stack (default: a new dir under /tmp/reelpulse-bench)."
HELP_BOOTSTRAP = "Bootstrap servers of a running stack: use it instead of starting one."
HELP_REGISTRY = "Registry URL (ccompat/v7) of that running stack."


@app.command()
def main(
    events: Annotated[int, typer.Option(min=1, help="Events per phase.")] = 300_000,
    keep_stack: Annotated[bool, typer.Option(help="Leave the started stack running.")] = False,
    state_dir: Annotated[Path | None, typer.Option(help=HELP_STATE_DIR)] = None,
    bootstrap: Annotated[str | None, typer.Option(help=HELP_BOOTSTRAP)] = None,
    registry_url: Annotated[str | None, typer.Option("--registry", help=HELP_REGISTRY)] = None,
    output: Annotated[Path, typer.Option(help="Where the JSON results go.")] = RESULTS_PATH,
) -> None:
    """Measure encode, EventProducer and Kafka's ProducerPerformance on one broker."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console)])
    started = datetime.now(UTC)
    with bench_stack(bootstrap, registry_url, state_dir, keep_stack) as settings:
        results = run(settings, events, drop=bool(bootstrap))
    write_results(
        output,
        {
            "benchmark": "producer",
            "started_at": started.isoformat(),
            "environment": environment(),
            "stack": "external" if bootstrap else "started by the benchmark",
            **results,
        },
    )


if __name__ == "__main__":
    app()
