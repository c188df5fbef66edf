"""Lake throughput: bronze catch-up from Kafka, silver and gold rebuilds, and DuckDB
beside Spark SQL over the lake.

Run ``python -m benchmarks.lake`` (``--help`` lists the options). It starts a private
Kafka + registry on free ports (``benchmarks.producer.bench_stack``) and sets up a lake
that is behind (not timed): the catalog and the simulator's first ``HEAD_EVENTS`` events
ingested into bronze, then the next ``--events`` produced as the backlog. Then, in one
Spark session (the settings' master, ``local[*]`` by default), it measures:

1. **baseline**: Spark's own Kafka source copying the same topics' raw records into a
   Delta table, no decoding (what Kafka -> Delta costs on this machine);
2. **bronze**: ``batch.bronze.run`` catching up on the backlog (decode by schema id,
   quarantine, one Delta table per event type, exactly once), then the same over every
   record into an empty lake from empty checkpoints (a first ingest);
3. **silver** and **gold**: ``batch.silver.run`` and ``batch.gold.run`` over that bronze;
4. **queries**: the silver heartbeats are repeated (fresh event ids) into a table of at
   least ``--query-rows`` rows; a gold query and an ad-hoc GROUP BY over it run through
   ``batch.sql`` (DuckDB over the Delta tables) and Spark SQL on the same paths, each
   cold (first run, views created) and warm (best of three).

The peak RSS of the benchmark's process tree is sampled throughout (Spark's JVM, and the
broker and registry when the benchmark started them), with each kind of process's share
at the peak.
Results go to ``artifacts/bench/lake.json``.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from rich.table import Table

from batch import bronze, gold, silver
from batch import spark as spark_support
from batch import sql as lake_sql
from batch.lake import Lake
from benchmarks.collector import MemorySampler
from benchmarks.producer import bench_stack, console, make_progress, verdict, write_results
from reelpulse import registry, topics
from reelpulse.contract import Contract
from reelpulse.producer import EventProducer
from reelpulse.settings import PROJECT_ROOT, Settings
from reelpulse.simulator import SimulationConfig, Simulator
from reelpulse.simulator.engine import Event

log = logging.getLogger("benchmarks.lake")

RESULTS_PATH = PROJECT_ROOT / "artifacts" / "bench" / "lake.json"
BRONZE_TARGET = 50_000
QUERY_TARGET_S = 1.0
HEAD_EVENTS = 10_000  # the lake's first events, ingested before the backlog (not timed)
PHASES = {
    "baseline": "baseline (raw copy)",
    "bronze": "bronze catch-up",
    "bronze_first": "bronze, empty lake",
    "silver": "silver",
    "gold": "gold",
}
MIB = 1024 * 1024
KEY = SecretStr("benchmark-pseudonymization-key-not-a-secret")

GOLD_QUERY = """
SELECT title_id, any_value(title_name) AS title, round(sum(watch_hours), 1) AS watch_hours
FROM gold.title_engagement_daily
WHERE event_date = (SELECT max(event_date) - INTERVAL 1 DAY FROM gold.title_engagement_daily)
GROUP BY title_id ORDER BY watch_hours DESC LIMIT 10
"""
ADHOC_QUERY = """
SELECT device_type, country, count(*) AS heartbeats, avg(bitrate_kbps) AS avg_bitrate_kbps,
       sum(rebuffer_ms) / sum(interval_ms) AS rebuffer_share
FROM silver.playback_heartbeat
GROUP BY device_type, country ORDER BY heartbeats DESC
"""


def timed(job: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = job()
    return time.perf_counter() - started, result


# --------------------------------------------------------------------------- data


def produce(
    settings: Settings, contract: Contract, stream: Iterator[Event], events: int, catalog: list[Any]
) -> int:
    """The catalog and the next ``events`` of the simulator's stream, acknowledged by
    Kafka. Returns how many were produced."""
    topics.ensure_topics(settings, contract.topics())
    ids = registry.register_all(settings, contract)
    with (
        make_progress() as progress,
        EventProducer(settings, contract, schema_ids=ids, validate=False) as producer,
    ):
        task = progress.add_task("producing simulated events", total=events)
        count = producer.produce_all(("title", t) for t in catalog)
        for name, record in itertools.islice(stream, events):
            producer.produce(name, record)
            count += 1
            if count % 10_000 == 0:
                progress.update(task, completed=count)
        producer.flush()
        progress.update(task, completed=events)
    return count


def kafka_records(settings: Settings, contract: Contract) -> int:
    names = sorted({e.topic for e in contract if e.topic not in bronze.NOT_INGESTED})
    return sum(state.messages for state in topics.topic_states(settings, names))


# --------------------------------------------------------------------------- Spark phases


def baseline_copy(spark: Any, settings: Settings, contract: Contract, target: str) -> int:
    """Spark's Kafka source -> Delta, raw bytes, no decoding: the floor bronze builds on."""
    names = ",".join(sorted({e.topic for e in contract if e.topic not in bronze.NOT_INGESTED}))
    frame = (
        spark.read.format("kafka")
        .options(**spark_support.kafka_options(settings))
        .option("subscribe", names)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
        .select("topic", "partition", "offset", "timestamp", "key", "value")
    )
    frame.write.format("delta").mode("overwrite").save(target)
    return int(spark.read.format("delta").load(target).count())


def bronze_rows(spark: Any, lake: Lake) -> int:
    root = Path(lake.bronze(""))
    return sum(spark.read.format("delta").load(str(p.parent)).count() for p in root.glob("*/_delta_log"))


def compiled_classes(spark: Any) -> int:
    """Classes of generated code this JVM has compiled so far (a cached one is not counted)."""
    return int(spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount())


def scale_heartbeats(spark: Any, lake: Lake, target: Lake, rows: int) -> int:
    """Silver heartbeats repeated, with fresh event ids, into ``target`` (at least ``rows``)."""
    from pyspark.sql import functions as F

    source = spark.read.format("delta").load(lake.silver("playback_heartbeat"))
    have = source.count()
    copies = max(1, -(-rows // have))
    scaled = source.crossJoin(spark.range(copies).withColumnRenamed("id", "_copy")).withColumn(
        "event_id", F.concat_ws("-", "event_id", F.col("_copy").cast("string"))
    )
    scaled.drop("_copy").write.format("delta").mode("overwrite").partitionBy("event_date").save(
        target.silver("playback_heartbeat")
    )
    shutil.copytree(lake.gold("title_engagement_daily"), target.gold("title_engagement_daily"))
    return int(spark.read.format("delta").load(target.silver("playback_heartbeat")).count())


def duckdb_times(root: str, query: str) -> dict[str, float]:
    cold, _ = timed(lambda: lake_sql.query(root, query))
    connection = lake_sql.lake_connection(root)
    try:
        warm = min(timed(lambda: connection.execute(query).fetchall())[0] for _ in range(3))
    finally:
        connection.close()
    return {"cold_s": cold, "warm_s": warm}


def spark_times(spark: Any, target: Lake, query: str) -> dict[str, float]:
    for layer, name in (("silver", "playback_heartbeat"), ("gold", "title_engagement_daily")):
        spark.read.format("delta").load(target.table(layer, name)).createOrReplaceTempView(f"{layer}_{name}")
    spark_query = query.replace("silver.", "silver_").replace("gold.", "gold_")
    cold, _ = timed(lambda: spark.sql(spark_query).collect())
    warm = min(timed(lambda: spark.sql(spark_query).collect())[0] for _ in range(3))
    return {"cold_s": cold, "warm_s": warm}


# --------------------------------------------------------------------------- report


def report(result: dict[str, Any]) -> None:
    phases = Table("phase", "rows", "seconds", "rows/s", title="Kafka -> bronze -> silver -> gold")
    for name in ("baseline", "bronze", "bronze_first", "silver", "gold"):
        phase = result[name]
        phases.add_row(
            PHASES[name],
            f"{phase['rows']:,}",
            f"{phase['seconds']:.1f}",
            f"{phase['rows'] / phase['seconds']:,.0f}",
        )
    console.print(phases)
    queries = Table(
        "query", "engine", "cold s", "warm s", title=f"queries over {result['query_rows']:,} silver rows"
    )
    for name, engines in result["queries"].items():
        for engine, times in engines.items():
            queries.add_row(name, engine, f"{times['cold_s']:.3f}", f"{times['warm_s']:.3f}")
    console.print(queries)
    bronze_rate = result["bronze"]["rows"] / result["bronze"]["seconds"]
    baseline_rate = result["baseline"]["rows"] / result["baseline"]["seconds"]
    console.print(
        f"bronze catch-up {bronze_rate:,.0f} events/s (target >= {BRONZE_TARGET:,}) "
        f"{verdict(bronze_rate >= BRONZE_TARGET)}; raw Kafka -> Delta copy {baseline_rate:,.0f}/s "
        f"({bronze_rate / baseline_rate:.0%}); into an empty lake "
        f"{result['bronze_first']['rows'] / result['bronze_first']['seconds']:,.0f}/s"
    )
    console.print(
        f"generated classes compiled: {result['head_compiled']:,} by the session up to the lake "
        f"before the backlog, {result['bronze']['compiled']:,} by the catch-up"
    )
    for name, engines in result["queries"].items():
        duck, spark = engines["duckdb"], engines["spark"]
        console.print(
            f"{name}: DuckDB {duck['warm_s']:.3f}s warm, {duck['cold_s']:.3f}s cold (target <= "
            f"{QUERY_TARGET_S:.0f}s) {verdict(duck['warm_s'] <= QUERY_TARGET_S)}; "
            f"Spark SQL {spark['warm_s']:.3f}s warm, {spark['cold_s']:.3f}s cold"
        )
    parts = ", ".join(f"{kind} {mib:,.0f}" for kind, mib in result["rss_at_peak_mib"].items())
    console.print(f"peak RSS of the process tree: {result['peak_rss_mib']:,.0f} MiB ({parts})")


# --------------------------------------------------------------------------- the run


def run(settings: Settings, events: int, query_rows: int, seed: int) -> dict[str, Any]:
    contract = Contract(settings.schemas_dir)
    work = Path(settings.state_dir) / "lake-bench"
    shutil.rmtree(work, ignore_errors=True)
    settings = settings.model_copy(
        update={"lake_dir": str(work / "lake"), "silver_pseudonymization_key": KEY}
    )
    lake, first, scaled = Lake(settings.lake_dir), Lake(str(work / "first")), Lake(str(work / "scaled"))
    simulator = Simulator(
        SimulationConfig(
            seed=seed,
            users=20_000,
            titles=2_000,
            rate=2_000.0,
            duration_s=None,
            max_events=HEAD_EVENTS + events,
        )
    )
    stream = simulator.events()
    produce(settings, contract, stream, HEAD_EVENTS, simulator.catalog())
    sampler = MemorySampler(os.getpid())
    sampler.start()
    spark = spark_support.session(settings, "reelpulse-bench-lake")
    result: dict[str, Any] = {"events": events, "spark_master": settings.spark_master}
    try:
        with console.status(f"the lake before the backlog: bronze over the first {HEAD_EVENTS:,} events"):
            bronze.run(settings, spark)
        result["head_compiled"] = compiled_classes(spark)
        head_rows = bronze_rows(spark, lake)
        seconds, produced = timed(lambda: produce(settings, contract, stream, events, []))
        console.print(f"produced {produced:,} events in {seconds:.1f}s ({produced / seconds:,.0f}/s)")
        result["kafka_records"] = records = kafka_records(settings, contract)
        with console.status("baseline: raw Kafka -> Delta copy"):
            seconds, rows = timed(lambda: baseline_copy(spark, settings, contract, str(work / "raw")))
        result["baseline"] = {"rows": rows, "seconds": seconds}
        compiled = compiled_classes(spark)
        with console.status("bronze: catch-up of the backlog"):
            seconds, _ = timed(lambda: bronze.run(settings, spark))
        result["bronze"] = {
            "rows": bronze_rows(spark, lake) - head_rows,
            "seconds": seconds,
            "compiled": compiled_classes(spark) - compiled,
        }
        empty = settings.model_copy(update={"lake_dir": first.root})
        with console.status("bronze: first ingest into an empty lake"):
            seconds, _ = timed(lambda: bronze.run(empty, spark))
        result["bronze_first"] = {"rows": bronze_rows(spark, first), "seconds": seconds}
        key = settings.pseudonymization_key()
        with console.status("silver: rebuild from bronze"):
            seconds, merged = timed(lambda: silver.run(settings, spark, pseudonymization_key=key))
        result["silver"] = {"rows": sum(t["merged"] for t in merged.events.values()), "seconds": seconds}
        with console.status("gold: rebuild from silver"):
            seconds, counts = timed(lambda: gold.run(settings, spark))
        result["gold"] = {"rows": sum(counts.values()), "seconds": seconds}
        with console.status(f"scaling silver heartbeats to {query_rows:,} rows"):
            result["query_rows"] = scale_heartbeats(spark, lake, scaled, query_rows)
        queries = {}
        for name, query in (
            ("gold: top titles yesterday", GOLD_QUERY),
            ("silver: ad-hoc GROUP BY", ADHOC_QUERY),
        ):
            with console.status(f"{name}: DuckDB and Spark SQL"):
                queries[name] = {
                    "duckdb": duckdb_times(scaled.root, query),
                    "spark": spark_times(spark, scaled, query),
                }
        result["queries"] = queries
    finally:
        spark.stop()
        result["peak_rss_mib"] = sampler.finish() / MIB
        result["rss_at_peak_mib"] = {kind: rss / MIB for kind, rss in sampler.by_kind_at_peak().items()}
    for phase, expected in (("bronze", records - head_rows), ("bronze_first", records)):
        if result[phase]["rows"] < expected:
            raise RuntimeError(f"{phase} landed {result[phase]['rows']:,} of {expected:,} Kafka records")
    report(result)
    return result


def main(
    events: Annotated[int, typer.Option(help="Simulated events to produce and ingest")] = 1_000_000,
    query_rows: Annotated[int, typer.Option(help="Least silver rows the queries scan")] = 10_000_000,
    seed: Annotated[int, typer.Option(help="Simulator seed")] = 7,
    bootstrap: Annotated[str | None, typer.Option(help="Use this running broker (with --registry)")] = None,
    registry_url: Annotated[str | None, typer.Option("--registry", help="Its registry URL")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State dir of the stack started here")] = None,
    keep_stack: Annotated[bool, typer.Option(help="Leave the stack running")] = False,
    output: Annotated[Path, typer.Option(help="Where the JSON results go")] = RESULTS_PATH,
) -> None:
    """Benchmark bronze catch-up beside a raw Kafka -> Delta copy, silver and gold rebuilds,
    and DuckDB beside Spark SQL over at least 10 million silver rows."""
    logging.basicConfig(level=logging.WARNING)
    with bench_stack(bootstrap, registry_url, state_dir, keep_stack) as settings:
        result = run(settings, events, query_rows, seed)
    write_results(output, result)


if __name__ == "__main__":
    typer.run(main)
