"""Collector throughput and latency: devices posting batches of 100 events over loopback,
next to the producer-only rate on the same broker.

Run ``python -m benchmarks.collector`` (``--help`` lists the options). It starts a
private Kafka + registry on free ports (``benchmarks.producer.bench_stack``), the
collector with uvicorn in a subprocess (``reelpulse collector serve --workers 2``), and a
load generator in another process: keep-alive HTTP/1.1 connections, each posting
pre-built bodies of 100 simulator events back to back, at several concurrency levels.
For each level it reports accepted events/s and request latency p50/p95/p99; then it
runs the producer benchmark's trusted phase (``EventProducer(validate=False)``) on the
same broker. It checks that the device topics grew by exactly the events the collector
accepted, and writes ``artifacts/bench/collector.json``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import psutil
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from benchmarks.producer import (
    EVENT,
    BenchmarkError,
    PhaseSpec,
    Rate,
    bench_stack,
    create_topics,
    environment,
    make_progress,
    make_records,
    register_topics,
    run_phase,
    verdict,
    write_results,
)
from collector import keys
from collector.batch import INTERNAL_TYPES
from collector.testing import NotReady, device_events, wait_ready
from reelpulse import registry, topics
from reelpulse.contract import Contract, encode
from reelpulse.settings import PROJECT_ROOT, Settings
from reelpulse.testing import free_port

log = logging.getLogger("benchmarks.collector")
console = Console()

RESULTS_PATH = PROJECT_ROOT / "artifacts" / "bench" / "collector.json"
BATCH = 100
TARGET_RATE = 50_000
TARGET_P99_MS = 50.0
TARGET_LINE = "target: >= 50,000 events/s accepted with p99 request latency <= 50 ms"
RSS_SAMPLE_S = 0.1
WARMUP_S = 2.0
DEAD_LETTERS = "reelpulse.deadletter"
NOTES = (
    "Everything shares this machine's 2 cores: the collector's workers, Kafka, the registry, "
    "and the load generator (one process, raw asyncio HTTP/1.1, about 20-40 us of CPU a request).",
    "Each request carries 100 simulator events (all device event types, about 50 KB of JSON); "
    "a request counts when it is answered 200, which the collector sends only after Kafka "
    "acknowledged every event (acks=all, idempotent).",
    "Latency is from writing the request to reading the whole response, on the load generator.",
    "Closed loop: each connection sends its next request when the previous answer arrives, so "
    "more connections trade latency for throughput.",
    "The producer-only row is benchmarks.producer's trusted phase (EventProducer, validate=False) "
    "on the same broker in the same run: no HTTP, no JSON, no validation.",
)


# --------------------------------------------------------------------------- bodies


def build_bodies(count: int) -> tuple[list[bytes], int]:
    """Request bodies of ``BATCH`` simulator events each (event times just before now);
    returns the bodies and the JSON bytes they hold."""
    events = device_events(count, seed=20_261_201, rate=5000.0)
    bodies = [
        orjson.dumps({"events": [{"type": n, "event": r} for n, r in events[i : i + BATCH]]})
        for i in range(0, len(events) - BATCH + 1, BATCH)
    ]
    return bodies, sum(len(b) for b in bodies)


# --------------------------------------------------------------------------- load generator


@dataclass(frozen=True)
class Load:
    """What one load level measured."""

    connections: int
    seconds: float
    requests: int
    events: int
    failures: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_s: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": round(self.events_per_s, 1)}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def request_bytes(host: str, port: int, key: str, body: bytes) -> bytes:
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    stop_at: float,
    start_at: float,
    out: dict[str, Any],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    index = offset
    try:
        while (now := time.perf_counter()) < stop_at:
            writer.write(requests[index % len(requests)])
            index += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if now < start_at:
                continue
            if status == 200:
                out["latencies"].append(time.perf_counter() - now)
            else:
                out["failures"][str(status)] = out["failures"].get(str(status), 0) + 1
    finally:
        writer.close()


async def _drive(
    host: str, port: int, requests: list[bytes], connections: int, seconds: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "failures": {}}
    start_at = time.perf_counter() + WARMUP_S
    stop_at = start_at + seconds
    step = max(1, len(requests) // connections)
    await asyncio.gather(
        *(_connection(host, port, requests, i * step, stop_at, start_at, out) for i in range(connections))
    )
    return out


def load_process(
    host: str, port: int, key: str, bodies: list[bytes], levels: list[int], seconds: float, results: Any
) -> None:
    """Child process: drive each concurrency level in turn; put one Load per level."""
    import uvloop

    requests = [request_bytes(host, port, key, body) for body in bodies]
    for connections in levels:
        cpu = psutil.Process().cpu_times()
        out = uvloop.run(_drive(host, port, requests, connections, seconds))
        used = psutil.Process().cpu_times()
        latencies = sorted(out["latencies"])
        results.put(
            Load(
                connections,
                seconds,
                len(latencies),
                len(latencies) * BATCH,
                out["failures"],
                round(percentile(latencies, 0.50) * 1000, 2),
                round(percentile(latencies, 0.95) * 1000, 2),
                round(percentile(latencies, 0.99) * 1000, 2),
                round((latencies[-1] if latencies else float("nan")) * 1000, 2),
                round(used.user + used.system - cpu.user - cpu.system, 2),
            )
        )


# --------------------------------------------------------------------------- the collector


class TreeSampler(threading.Thread):
    """Samples the RSS (summed) and CPU time of a process and its children."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_rss = 0
        self._stop_event = threading.Event()

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def rss(self) -> int:
        total = 0
        for process in self.processes():
            with suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def cpu_s(self) -> float:
        return sum(cpu_of(process.pid) for process in self.processes())

    def run(self) -> None:
        while not self._stop_event.wait(RSS_SAMPLE_S):
            self.peak_rss = max(self.peak_rss, self.rss())

    def finish(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_rss


# What the processes of a benchmark's tree are, by the start of a JVM's main class or jar.
JVM_KINDS = {
    "org.apache.spark.deploy.SparkSubmit": "Spark JVM",
    "kafka.Kafka": "Kafka broker",
    "apicurio-registry": "schema registry",
}
JVM_VALUED_OPTIONS = frozenset({"-cp", "-classpath", "--class-path", "-p", "--module-path"})


def process_kind(cmdline: list[str]) -> str:
    """What a process is, for a person: a JVM by its main class or jar (the Spark JVM, the
    broker, the registry), a PySpark worker, else Python or the program's name."""
    if not cmdline:
        return "unknown"
    if Path(cmdline[0]).name == "java":
        return _jvm_kind(cmdline[1:])
    if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline:
        return "PySpark workers"
    return "Python" if Path(cmdline[0]).name.startswith("python") else Path(cmdline[0]).name


def _jvm_kind(args: list[str]) -> str:
    rest = iter(args)
    for arg in rest:
        if arg in JVM_VALUED_OPTIONS:
            next(rest, None)
        elif arg == "-jar" or not arg.startswith("-"):
            main = Path(next(rest, "")).name if arg == "-jar" else arg
            return next((kind for start, kind in JVM_KINDS.items() if main.startswith(start)), main)
    return "java"


class MemorySampler(TreeSampler):
    """``TreeSampler`` (peak RSS of the process tree) that also keeps the peak of its
    anonymous memory (Linux ``RssAnon``: heaps, stacks, off-heap buffers; not the file pages
    a process maps) and, at the RSS peak, each process's kind, RSS and anonymous memory."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.peak_anon = 0
        self.at_peak: list[dict[str, Any]] = []

    def sample(self) -> list[dict[str, Any]]:
        found = []
        for process in self.processes():
            with suppress(psutil.Error, OSError):
                rss, anon = process.memory_info().rss, 0
                with open(f"/proc/{process.pid}/status") as status:
                    anon = next((int(x.split()[1]) * 1024 for x in status if x.startswith("RssAnon:")), 0)
                kind = process_kind(process.cmdline())
                found.append({"pid": process.pid, "kind": kind, "rss": rss, "anon": anon})
        return found

    def run(self) -> None:
        while not self._stop_event.wait(RSS_SAMPLE_S):
            found = self.sample()
            rss = sum(p["rss"] for p in found)
            if rss > self.peak_rss:
                self.peak_rss, self.at_peak = rss, found
            self.peak_anon = max(self.peak_anon, sum(p["anon"] for p in found))

    def by_kind_at_peak(self) -> dict[str, int]:
        """RSS at the peak summed by kind of process, largest first."""
        kinds: Counter[str] = Counter()
        for process in self.at_peak:
            kinds[process["kind"]] += process["rss"]
        return dict(kinds.most_common())


def collector_env(settings: Settings, keys_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return {
        **env,
        "REELPULSE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REELPULSE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "REELPULSE_STATE_DIR": str(settings.state_dir),
        "REELPULSE_COLLECTOR_KEYS_FILE": str(keys_file),
        "REELPULSE_COLLECTOR_RATE_LIMIT_EVENTS_PER_S": "10000000",
        "REELPULSE_COLLECTOR_RATE_LIMIT_BURST": "10000000",
    }


@contextmanager
def running_collector(
    settings: Settings, workers: int, port: int
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``reelpulse collector serve`` on ``port`` with a fresh client key; stopped after."""
    keys_file = settings.state_dir / "collector" / f"bench-{uuid.uuid4().hex[:8]}.json"
    key = keys.create(keys_file, "bench-devices")
    log_path = settings.state_dir / "logs" / "collector.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "reelpulse",
        "collector",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with log_path.open("ab") as out:
        server = subprocess.Popen(
            command, env=collector_env(settings, keys_file), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", server)
        except NotReady as error:
            raise BenchmarkError(f"{error}; see {log_path}") from error
        yield server, key
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def device_topic_counts(settings: Settings, contract: Contract) -> dict[str, int]:
    names = sorted({e.topic for e in contract if e.name not in INTERNAL_TYPES} | {DEAD_LETTERS})
    return {state.name: state.messages for state in topics.topic_states(settings, names)}


def busy_cpu_s() -> float:
    """CPU seconds every process on the machine has used (all cores)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


# --------------------------------------------------------------------------- the run


def run_load(
    settings: Settings, bodies: list[bytes], workers: int, levels: list[int], seconds: float
) -> dict[str, Any]:
    """Start the collector, drive every level, and count what reached Kafka."""
    from reelpulse import stack

    contract = Contract(settings.schemas_dir)
    port = free_port()
    before = device_topic_counts(settings, contract)
    loads: list[Load] = []
    with running_collector(settings, workers, port) as (server, key):
        sampler = TreeSampler(server.pid)
        baseline_rss = sampler.rss()
        sampler.start()
        kafka_pid = stack.running_pid(stack.KAFKA, settings)
        registry_pid = stack.running_pid(stack.REGISTRY, settings)
        cpu_before = (
            sampler.cpu_s(),
            cpu_of(kafka_pid),
            cpu_of(registry_pid),
            busy_cpu_s(),
            time.monotonic(),
        )
        results = mp.get_context("spawn").Queue()
        child = mp.get_context("spawn").Process(
            target=load_process,
            args=("127.0.0.1", port, key, bodies, levels, seconds, results),
            name="bench-load",
        )
        child.start()
        with make_progress() as progress:
            task = progress.add_task("collector load levels", total=len(levels))
            for _ in levels:
                loads.append(_next_load(results, child))
                progress.advance(task)
        load_cpu = sum(load.client_cpu_s for load in loads)
        cpu_after = (sampler.cpu_s(), cpu_of(kafka_pid), cpu_of(registry_pid), busy_cpu_s(), time.monotonic())
        child.join(timeout=30)
        peak = sampler.finish()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    after = device_topic_counts(settings, contract)
    accepted_metric = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("reelpulse_collector_events_accepted_total{")
    )
    return {
        "loads": loads,
        "rss_baseline_bytes": baseline_rss,
        "rss_peak_bytes": peak,
        "collector_cpu_s": round(cpu_after[0] - cpu_before[0], 1),
        "kafka_cpu_s": round(cpu_after[1] - cpu_before[1], 1),
        "registry_cpu_s": round(cpu_after[2] - cpu_before[2], 1),
        "load_generator_cpu_s": round(load_cpu, 1),
        "wall_s": round(cpu_after[4] - cpu_before[4], 1),
        # whatever else ran on the machine meanwhile (other people's jobs, the OS)
        "other_cpu_s": round(
            (cpu_after[3] - cpu_before[3])
            - sum(after - before for after, before in zip(cpu_after[:3], cpu_before[:3], strict=True))
            - load_cpu,
            1,
        ),
        "topic_growth": {name: after[name] - before.get(name, 0) for name in after},
        "accepted_metric": int(accepted_metric),
    }


def _next_load(results: Any, child: Any) -> Load:
    while True:
        try:
            return results.get(timeout=1.0)
        except Exception as error:  # queue.Empty
            if not child.is_alive():
                raise BenchmarkError(f"load generator exited with {child.exitcode}") from error


def producer_only(settings: Settings, events: int) -> Rate:
    """benchmarks.producer's trusted phase on this broker: the rate without HTTP."""
    topic = f"bench.heartbeats-{uuid.uuid4().hex[:8]}-collector-baseline"
    create_topics(settings, [topic])
    schema_ids = register_topics(settings, [topic])
    records = make_records(min(events, 50_000))
    contract = Contract(settings.schemas_dir)
    value_bytes = sum(len(encode(schema_ids[topic], contract[EVENT].parsed, r)) for r in records)
    value_bytes = value_bytes * events // len(records)
    overrides = settings.model_dump(
        include={"kafka_bootstrap_servers", "schema_registry_url", "state_dir", "jar_cache"}
    )
    spec = PhaseSpec("produce, trusted", overrides, topic, schema_ids[topic], events, value_bytes, False)
    with make_progress() as progress:
        return run_phase(spec, progress, "producer only (EventProducer)")


def report(result: dict[str, Any], producer: Rate, workers: int) -> dict[str, Any]:
    loads: list[Load] = result["loads"]
    table = Table(title=f"collector: batches of {BATCH} events, {workers} uvicorn workers")
    for column in (
        "connections",
        "events/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "non-200",
        "load-gen CPU s",
    ):
        table.add_column(column, justify="right")
    for load in loads:
        table.add_row(
            str(load.connections),
            f"{load.events_per_s:,.0f}",
            f"{load.p50_ms:.1f}",
            f"{load.p95_ms:.1f}",
            f"{load.p99_ms:.1f}",
            f"{load.max_ms:.1f}",
            str(sum(load.failures.values())),
            f"{load.client_cpu_s:.1f}",
        )
    table.add_row("producer only", f"{producer.events_per_s:,.0f}", "", "", "", "", "", "")
    console.print(table)
    within = [load for load in loads if load.p99_ms <= TARGET_P99_MS]
    best = max(within, key=lambda load: load.events_per_s, default=None)
    fastest = max(loads, key=lambda load: load.events_per_s)
    best_rate = best.events_per_s if best else 0.0
    console.print(
        f"collector peak RSS {result['rss_peak_bytes'] / 2**20:,.0f} MiB (all workers; "
        f"{result['rss_baseline_bytes'] / 2**20:,.0f} MiB idle)"
    )
    console.print(
        f"CPU seconds over {result['wall_s']} s of load (2 cores = {2 * result['wall_s']:.0f}): "
        f"collector {result['collector_cpu_s']}, Kafka {result['kafka_cpu_s']}, registry "
        f"{result['registry_cpu_s']}, load generator {result['load_generator_cpu_s']}, "
        f"everything else on the machine {result['other_cpu_s']}"
    )
    grown = sum(v for k, v in result["topic_growth"].items() if k != DEAD_LETTERS)
    letters = result["topic_growth"].get(DEAD_LETTERS, 0)
    console.print(
        f"topics grew by {grown:,} events (dead letters {letters}); "
        f"the collector counted {result['accepted_metric']:,} accepted"
    )
    console.print(TARGET_LINE)
    console.print(
        f"  best with p99 <= {TARGET_P99_MS:g} ms: {best_rate:,.0f} events/s "
        f"({best.connections if best else '-'} connections) {verdict(best_rate >= TARGET_RATE)}; "
        f"fastest: {fastest.events_per_s:,.0f} events/s at p99 {fastest.p99_ms:.1f} ms "
        f"({fastest.connections} connections); producer only: {producer.events_per_s:,.0f} events/s "
        f"(fastest collector level / producer only: {fastest.events_per_s / producer.events_per_s:.0%})"
    )
    console.print("notes:\n" + "\n".join(f"  - {note}" for note in NOTES))
    return {
        "line": TARGET_LINE,
        "best_within_p99": best.as_dict() if best else None,
        "fastest": fastest.as_dict(),
        "rate_pass": best_rate >= TARGET_RATE,
        "producer_only_events_per_s": round(producer.events_per_s, 1),
    }


def check_counts(result: dict[str, Any], warmup_events: int) -> None:
    """Every event answered 200 is in Kafka: the topics grew by at least the counted ones."""
    grown = sum(v for k, v in result["topic_growth"].items() if k != DEAD_LETTERS)
    counted = sum(load.events for load in result["loads"])
    if grown != result["accepted_metric"] or grown < counted:
        raise BenchmarkError(
            f"topics grew by {grown:,}, the collector counted {result['accepted_metric']:,} accepted and "
            f"the load generator {counted:,} (+ warm-up {warmup_events:,})"
        )


app = typer.Typer(add_completion=False)


@app.command()
def main(
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 2,
    connections: Annotated[str, typer.Option(help="Concurrency levels, comma-separated")] = "4,6,8,12,16",
    seconds: Annotated[
        float, typer.Option(min=1, help="Measured seconds per level (after 2 s warm-up)")
    ] = 10.0,
    events: Annotated[
        int, typer.Option(min=BATCH, help="Distinct simulator events to cycle through")
    ] = 100_000,
    producer_events: Annotated[int, typer.Option(min=1, help="Events for the producer-only phase")] = 300_000,
    keep_stack: Annotated[bool, typer.Option(help="Leave the started stack running.")] = False,
    state_dir: Annotated[Path | None, typer.Option(help="State dir of the started stack.")] = None,
    output: Annotated[Path, typer.Option(help="Where the JSON results go.")] = RESULTS_PATH,
) -> None:
    """Load the collector over loopback and report events/s and latency beside the producer."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console)])
    started = datetime.now(UTC)
    levels = [int(level) for level in connections.split(",")]
    with console.status(f"building {events:,} simulator events in batches of {BATCH}"):
        bodies, body_bytes = build_bodies(events)
    with bench_stack(None, None, state_dir, keep_stack) as settings:
        contract = Contract(settings.schemas_dir)
        topics.ensure_topics(settings, contract.topics())
        registry.register_all(settings, contract)
        result = run_load(settings, bodies, workers, levels, seconds)
        producer = producer_only(settings, producer_events)
    warmup = sum(result["topic_growth"].values()) - sum(load.events for load in result["loads"])
    targets = report(result, producer, workers)
    check_counts(result, warmup)
    write_results(
        output,
        {
            "benchmark": "collector",
            "started_at": started.isoformat(),
            "environment": {**environment(), "workers": workers},
            "batch_events": BATCH,
            "distinct_events": len(bodies) * BATCH,
            "average_body_bytes": round(body_bytes / len(bodies)),
            "levels": [load.as_dict() for load in result["loads"]],
            "rss_baseline_bytes": result["rss_baseline_bytes"],
            "rss_peak_bytes": result["rss_peak_bytes"],
            "cpu_s": {
                name: result[f"{name}_cpu_s"]
                for name in ("collector", "kafka", "registry", "load_generator", "other")
            },
            "load_wall_s": result["wall_s"],
            "topic_growth": result["topic_growth"],
            "accepted_metric": result["accepted_metric"],
            "producer_only": producer.as_dict(),
            "targets": targets,
            "notes": list(NOTES),
        },
    )


if __name__ == "__main__":
    app()
