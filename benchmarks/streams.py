"""Streams throughput and alert latency: one Faust worker on the playback-quality monitor
beside a bare confluent-kafka consume-and-decode loop computing the same aggregates, and
the time from an event to the alert it causes at 5,000 events/s offered.

Run ``python -m benchmarks.streams`` (``--help`` lists the options). In one run it:

1. fills ``reelpulse.playback`` with simulator traffic (``--events``, default 300,000);
2. bare loop: a confluent-kafka consumer reads the topic and runs every record through
   the same decode, checks, aggregation and rule evaluation (``streams.pipeline``) with
   an in-memory store: no tables, no changelogs, no commits;
3. worker: ``python -m streams worker --monitors playback`` (a fresh consumer group,
   ``--start-at earliest``) reads the same records, with RocksDB tables, changelogs and
   offset commits; its own first/last batch times give the rate, and its RSS and CPU time
   are sampled every 50 ms;
4. latency: a fresh worker with every monitor; a producer offers 5,000 events/s of
   simulator traffic (every event type, paced in real time) plus,
   every 2 s, a probe: ``min_samples`` failing play attempts on a new CDN edge, which
   fires ``edge_play_failures`` at the last of them. Latency is the alert's arrival at a
   consumer of ``reelpulse.alerts`` minus that last event's ``event_time``.

Targets: worker >= 25,000 events/s and >= 1/3 of the bare loop; event-to-alert p99 <=
500 ms. Results go to ``artifacts/bench/streams.json``.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer
from confluent_kafka import Consumer
from rich.table import Table

from benchmarks.producer import bench_stack, console, make_progress, percent, verdict, write_results
from reelpulse import registry, topics
from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import PROJECT_ROOT, Settings
from reelpulse.simulator import SimulationConfig, Simulator
from streams.alerts import Fence
from streams.codec import WireDecoder, registry_fetcher
from streams.config import load_rules
from streams.pipeline import Pipeline
from streams.processor import MemoryStore, Processor
from streams.testing import WorkerProcess, end_offsets

log = logging.getLogger("benchmarks.streams")
RESULTS_PATH = PROJECT_ROOT / "artifacts" / "bench" / "streams.json"
TOPIC = "reelpulse.playback"
TARGET_RATE = 25_000
TARGET_RATIO = 1 / 3
TARGET_P99_MS = 500
OFFERED_PER_S = 5000
PROBE_EVERY_S = 2.0
SAMPLE_S = 0.05


@dataclass
class Throughput:
    name: str
    events: int
    seconds: float
    cpu_s: float | None = None
    peak_rss: int | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate),
            "cpu_s": self.cpu_s,
            "events_per_cpu_s": round(self.events / self.cpu_s) if self.cpu_s else None,
            "peak_rss_bytes": self.peak_rss,
        }


# --------------------------------------------------------------------------- fill


def provision(settings: Settings, contract: Contract) -> dict[str, int]:
    topics.ensure_topics(settings, contract.topics())
    return registry.register_all(settings, contract)


def fill(settings: Settings, contract: Contract, ids: dict[str, int], events: int) -> int:
    """Produce ``events`` playback events of simulator traffic (event times end now)."""
    rate = 10_000.0
    seconds = events / rate / 0.9
    config = SimulationConfig(
        seed=77, start_ms=int(time.time() * 1000 - seconds * 1000), users=40_000, rate=rate, duration_s=None
    )
    produced = 0
    with (
        make_progress() as progress,
        EventProducer(settings, contract, schema_ids=ids, validate=False) as producer,
    ):
        task = progress.add_task(f"filling {TOPIC}", total=events)
        for name, record in Simulator(config).events():
            if contract[name].topic != TOPIC:
                continue
            producer.produce(name, record)
            produced += 1
            if produced % 5000 == 0:
                progress.update(task, completed=produced)
            if produced == events:
                break
        progress.update(task, completed=produced)
    return produced


# --------------------------------------------------------------------------- bare loop


def bare_loop(settings: Settings, contract: Contract, total: int) -> Throughput:
    """confluent-kafka consume + the same decode, checks and aggregation, in this process."""
    processor = Processor(load_rules(), MemoryStore(), settings.topic_partitions)
    processor.loaded = True
    decoder = WireDecoder(contract, registry_fetcher(registry.client(settings)), [TOPIC])
    pipeline = Pipeline(processor, decoder, Fence(), lambda alert: None, lambda letter: None)
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    consumer.subscribe([TOPIC])
    seen, started = 0, None
    cpu_before = time.process_time()
    try:
        with make_progress() as progress:
            task = progress.add_task("bare confluent-kafka loop", total=total)
            while seen < total:
                batch = consumer.consume(2000, timeout=1.0)
                if not batch:
                    continue
                started = started or time.perf_counter()
                pipeline.handle([_Record(m) for m in batch])
                seen += len(batch)
                progress.update(task, completed=seen)
    finally:
        consumer.close()
    seconds = time.perf_counter() - (started or time.perf_counter())
    return Throughput(
        "bare loop (confluent-kafka)", seen, seconds, round(time.process_time() - cpu_before, 2)
    )


class _Record:
    """A confluent-kafka message with the attributes the pipeline reads."""

    __slots__ = ("headers", "key", "offset", "partition", "topic", "value")

    def __init__(self, message: Any) -> None:
        self.topic, self.partition, self.offset = message.topic(), message.partition(), message.offset()
        self.key, self.value, self.headers = message.key(), message.value(), message.headers()


# --------------------------------------------------------------------------- worker


class Sampler(threading.Thread):
    """Peak RSS and CPU time of a process (and its threads), sampled until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu_s = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_S):
            try:
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
                times = self.process.cpu_times()
                self.cpu_s = times.user + times.system
            except psutil.Error:
                return

    def finish(self) -> None:
        self._stop_event.set()
        self.join()


def faust_worker(settings: Settings, workdir: Path, total: int) -> Throughput:
    worker = WorkerProcess(
        settings, workdir, f"bench-{uuid.uuid4().hex[:8]}", monitors="playback", start_at="earliest"
    )
    ends = end_offsets(settings, [TOPIC])
    try:
        worker.start()
        assert worker.process is not None
        sampler = Sampler(worker.process.pid)
        sampler.start()
        cpu_at_start = sampler.process.cpu_times()
        with make_progress() as progress:
            task = progress.add_task("Faust worker (playback monitor)", total=total)

            def caught_up(status: dict[str, Any]) -> bool:
                progress.update(task, completed=sum(status["counters"]["processed"].values()))
                return all(status["positions"].get(tp, -1) >= end for tp, end in ends.items())

            status = worker.wait(caught_up, 900, "caught up")
        sampler.finish()
        processed = sum(status["counters"]["processed"].values())
        seconds = status["last_batch_at"] - status["first_batch_at"]
        cpu = round(sampler.cpu_s - cpu_at_start.user - cpu_at_start.system, 2)
        return Throughput("Faust worker", processed, seconds, cpu, sampler.peak_rss)
    finally:
        worker.stop()


# --------------------------------------------------------------------------- latency


@dataclass
class Probe:
    edge: str
    trigger_ms: int
    arrived_ms: int | None = None


def latency(
    settings: Settings, contract: Contract, ids: dict[str, int], workdir: Path, seconds: float
) -> dict:
    rules = load_rules()
    needed = rules["edge_play_failures"].min_samples
    worker = WorkerProcess(settings, workdir, f"bench-lat-{uuid.uuid4().hex[:8]}")  # every monitor
    probes: dict[str, Probe] = {}
    done = threading.Event()
    try:
        worker.start()
        assert worker.process is not None
        sampler = Sampler(worker.process.pid)
        sampler.start()
        listener = threading.Thread(target=_listen, args=(settings, contract, probes, done), daemon=True)
        listener.start()
        time.sleep(3)  # the alert consumer has its assignment
        with make_progress() as progress:
            task = progress.add_task(f"latency at {OFFERED_PER_S:,} events/s", total=int(seconds))
            offered = _offer(
                settings, contract, ids, seconds, needed, probes, lambda s: progress.update(task, completed=s)
            )
        time.sleep(3)
        done.set()
        listener.join(10)
        sampler.finish()
    finally:
        worker.stop()
    delays = sorted(p.arrived_ms - p.trigger_ms for p in probes.values() if p.arrived_ms is not None)
    missing = [p.edge for p in probes.values() if p.arrived_ms is None]
    return {
        "offered_events": offered,
        "offered_per_s": round(offered / seconds),
        "probes": len(probes),
        "alerts_received": len(delays),
        "missing": missing,
        "latency_ms": _quantiles(delays),
        "worker_peak_rss_bytes": sampler.peak_rss,
    }


def _quantiles(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}

    def q(p: float) -> float:
        return float(values[min(len(values) - 1, max(0, round(p * len(values)) - 1))])

    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": float(values[-1])}


def _offer(
    settings: Settings,
    contract: Contract,
    ids: dict[str, int],
    seconds: float,
    needed: int,
    probes: dict[str, Probe],
    tick: Any,
) -> int:
    """Paced simulator traffic at OFFERED_PER_S with a probe every PROBE_EVERY_S."""
    now = int(time.time() * 1000)
    config = SimulationConfig(seed=78, start_ms=now, users=25_000, rate=OFFERED_PER_S, duration_s=seconds)
    template: dict[str, Any] | None = None
    sent = 0
    next_probe = 2.0
    started = time.monotonic()
    with EventProducer(
        settings, contract, schema_ids=ids, validate=False, config={"linger.ms": 5}
    ) as producer:
        for name, record in Simulator(config).events():
            due = (record["envelope"]["event_time"] if "envelope" in record else record["event_time"]) - now
            delay = due / 1000 - (time.monotonic() - started)
            if delay > 0.002:
                time.sleep(delay)
            producer.produce(name, record)
            sent += 1
            if name == "playback_start" and template is None:
                template = record
            elapsed = time.monotonic() - started
            if template is not None and elapsed >= next_probe:
                _probe(producer, template, needed, len(probes), probes)
                sent += needed
                next_probe += PROBE_EVERY_S
                tick(int(elapsed))
            producer.poll(0)
    return sent


def _probe(producer: EventProducer, template: dict, needed: int, n: int, probes: dict[str, Probe]) -> None:
    edge = f"bench-edge-{n:04d}"
    trigger = 0
    for i in range(needed):
        record = copy.deepcopy(template)
        trigger = int(time.time() * 1000)
        record["envelope"]["event_time"] = trigger
        record["envelope"]["event_id"] = str(uuid.uuid4())
        record["envelope"]["session_id"] = str(uuid.uuid4())
        record.update(cdn_edge=edge, success=False, startup_time_ms=5000 + i)
        producer.produce("playback_start", record)
    probes[edge] = Probe(edge, trigger)


def _listen(settings: Settings, contract: Contract, probes: dict[str, Probe], done: threading.Event) -> None:
    decoder = WireDecoder(contract, registry_fetcher(registry.client(settings)), ["reelpulse.alerts"])
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"bench-alerts-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 5,
            "log_level": 3,
        }
    )
    consumer.subscribe(["reelpulse.alerts"])
    try:
        while not done.is_set():
            for message in consumer.consume(100, timeout=0.05):
                arrived = int(time.time() * 1000)
                alert = decoder.decode(message.value())[1]
                probe = probes.get(alert["entity"])
                if probe and alert["status"] == "FIRING" and probe.arrived_ms is None:
                    probe.arrived_ms = arrived
    finally:
        consumer.close()


# --------------------------------------------------------------------------- report


def report(bare: Throughput, worker: Throughput, lat: dict[str, Any], load: list[float]) -> dict[str, Any]:
    table = Table(
        "phase", "events", "seconds", "events/s", "CPU s", "events/CPU s", "peak RSS", title="streams"
    )
    for row in (bare, worker):
        d = row.as_dict()
        rss = f"{row.peak_rss / 2**20:,.0f} MiB" if row.peak_rss else "-"
        per_cpu = f"{d['events_per_cpu_s']:,}" if d["events_per_cpu_s"] else "-"
        table.add_row(
            row.name,
            f"{row.events:,}",
            f"{row.seconds:.1f}",
            f"{row.rate:,.0f}",
            str(row.cpu_s),
            per_cpu,
            rss,
        )
    console.print(table)
    ratio = worker.rate / bare.rate if bare.rate else 0.0
    p99 = lat["latency_ms"]["p99"]
    verdicts = {
        "worker_rate": worker.rate >= TARGET_RATE,
        "worker_vs_bare": ratio >= TARGET_RATIO,
        "latency_p99": p99 is not None and p99 <= TARGET_P99_MS and not lat["missing"],
    }
    console.print(
        f"worker: {worker.rate:,.0f} events/s (target >= {TARGET_RATE:,}) {verdict(verdicts['worker_rate'])}"
    )
    console.print(
        f"worker / bare loop: {percent(ratio)} (target >= 33.3%) {verdict(verdicts['worker_vs_bare'])}"
    )
    q = lat["latency_ms"]
    console.print(
        f"event-to-alert at {lat['offered_per_s']:,} events/s offered: p50 {q['p50']} ms, p95 {q['p95']} ms, "
        f"p99 {q['p99']} ms, max {q['max']} ms over {lat['alerts_received']}/{lat['probes']} probes "
        f"(target p99 <= {TARGET_P99_MS} ms) {verdict(verdicts['latency_p99'])}"
    )
    console.print(
        f"load average (1 min) before/after: {load[0]:.1f} / {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    return {
        "bare_loop": bare.as_dict(),
        "worker": worker.as_dict(),
        "worker_vs_bare": round(ratio, 3),
        "latency": lat,
        "verdicts": verdicts,
        "targets": {
            "worker_events_per_s": TARGET_RATE,
            "worker_vs_bare": TARGET_RATIO,
            "p99_ms": TARGET_P99_MS,
        },
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_before": load,
            "loadavg_after": list(os.getloadavg()),
        },
    }


def main(
    events: Annotated[int, typer.Option(help="Playback events for the throughput phases")] = 300_000,
    latency_s: Annotated[float, typer.Option(help="Seconds of offered load in the latency phase")] = 60.0,
    bootstrap: Annotated[str | None, typer.Option(help="Use this running broker (with --registry)")] = None,
    registry_url: Annotated[str | None, typer.Option("--registry", help="Its registry URL")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State dir of the stack started here")] = None,
    keep_stack: Annotated[bool, typer.Option(help="Leave the stack running")] = False,
    output: Annotated[Path, typer.Option(help="Where the JSON results go")] = RESULTS_PATH,
) -> None:
    """Benchmark the streams worker beside a bare consume-and-decode loop, and alert latency."""
    logging.basicConfig(level=logging.WARNING)
    load = list(os.getloadavg())
    with bench_stack(bootstrap, registry_url, state_dir, keep_stack) as settings:
        contract = Contract(settings.schemas_dir)
        ids = provision(settings, contract)
        fill(settings, contract, ids, events)
        total = sum(end_offsets(settings, [TOPIC]).values())
        workdir = Path(settings.state_dir) / "streams-bench"
        workdir.mkdir(parents=True, exist_ok=True)
        bare = bare_loop(settings, contract, total)
        worker = faust_worker(settings, workdir, total)
        lat = latency(settings, contract, ids, workdir, latency_s)
    write_results(output, report(bare, worker, lat, load))


if __name__ == "__main__":
    typer.run(main)
