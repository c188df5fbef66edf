"""The Kafka admin seam: creating the contract's topics and reading their state
(message counts and consumer-group lag) for ``reelpulse status``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from reelpulse.contract import TopicSpec
from reelpulse.settings import Settings

log = logging.getLogger("reelpulse.topics")
TIMEOUT_S = 15.0


QUIET = {"log_level": 3}  # librdkafka: errors only; its info lines are noise on a CLI


def admin(settings: Settings) -> AdminClient:
    return AdminClient({**settings.kafka_client_config(), **QUIET})


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=TIMEOUT_S).topics)
    missing = [
        NewTopic(
            spec.name, settings.topic_partitions, settings.topic_replication_factor, config=spec.config()
        )
        for spec in specs
        if spec.name not in existing
    ]
    if not missing:
        return []
    for name, future in client.create_topics(missing, operation_timeout=TIMEOUT_S).items():
        future.result()
        log.info("created topic %s", name)
    return [topic.topic for topic in missing]


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    messages: int


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    lag: int


def topic_states(settings: Settings, names: Iterable[str]) -> list[TopicState]:
    """Partitions and retained message count (end minus start offsets) of each topic."""
    client = admin(settings)
    metadata = client.list_topics(timeout=TIMEOUT_S).topics
    partitions = [TopicPartition(n, p) for n in names if n in metadata for p in metadata[n].partitions]
    latest = _offsets(client, partitions, OffsetSpec.latest())
    earliest = _offsets(client, partitions, OffsetSpec.earliest())
    counts: dict[str, int] = {}
    for tp in partitions:
        counts[tp.topic] = (
            counts.get(tp.topic, 0) + latest[(tp.topic, tp.partition)] - earliest[(tp.topic, tp.partition)]
        )
    return [TopicState(n, len(metadata[n].partitions), counts.get(n, 0)) for n in names if n in metadata]


def _offsets(
    client: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec
) -> dict[tuple[str, int], int]:
    if not partitions:
        return {}
    futures = client.list_offsets({tp: spec for tp in partitions}, request_timeout=TIMEOUT_S)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


def group_lags(settings: Settings) -> list[GroupLag]:
    """Lag of every consumer group, summed per topic."""
    client = admin(settings)
    groups = client.list_consumer_groups(request_timeout=TIMEOUT_S).result().valid
    lags = []
    for group in sorted(g.group_id for g in groups):
        lags.extend(_group_lag(client, group))
    return lags


def _group_lag(client: AdminClient, group: str) -> list[GroupLag]:
    request = [ConsumerGroupTopicPartitions(group)]
    try:
        committed = client.list_consumer_group_offsets(request)[group].result().topic_partitions
    except KafkaException as error:
        log.warning("cannot read offsets of group %s: %s", group, error)
        return []
    committed = [tp for tp in committed if tp.offset >= 0]
    latest = _offsets(
        client, [TopicPartition(tp.topic, tp.partition) for tp in committed], OffsetSpec.latest()
    )
    per_topic: dict[str, int] = {}
    for tp in committed:
        per_topic[tp.topic] = per_topic.get(tp.topic, 0) + latest[(tp.topic, tp.partition)] - tp.offset
    return [GroupLag(group, topic, lag) for topic, lag in sorted(per_topic.items())]


def read_topic(settings: Settings, topic: str) -> Iterator[Message]:
    """Every record now in ``topic``: all partitions at once, from the earliest retained
    offset up to the end offsets read when the call starts (later records are left out)."""
    consumer = Consumer({**settings.kafka_client_config(), **QUIET, "group.id": "reelpulse-read-topic"})
    try:
        partitions = consumer.list_topics(topic, timeout=TIMEOUT_S).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S) for p in partitions
        }
        remaining = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in sorted(remaining)])
        while remaining:
            yield from _until_ends(consumer.consume(1000, timeout=0.2), ends, remaining)
    finally:
        consumer.close()


def _until_ends(
    messages: list[Message], ends: dict[int, tuple[int, int]], remaining: set[int]
) -> Iterator[Message]:
    for message in messages:
        if message.error() is not None:
            raise KafkaException(message.error())
        partition, offset = message.partition() or 0, message.offset() or 0
        if offset >= ends[partition][1]:
            continue
        if offset + 1 >= ends[partition][1]:
            remaining.discard(partition)
        yield message


def read_keys(settings: Settings, topic: str) -> set[str]:
    """Every distinct key currently in ``topic`` (for a compacted topic: its entities)."""
    keys = (message.key() for message in read_topic(settings, topic))
    return {key.decode() for key in keys if key is not None}
