"""Spark, DuckDB and Python types derived from the contract: checked against hand-built
Spark schemas (the mapping of Spark's ``from_avro``), against a real DuckDB, and against
the schemas' own field names and enum symbols."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DataType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from reelpulse.contract import Contract, EventType, walk_fields
from reelpulse.derive import (
    duckdb_columns,
    duckdb_type,
    python_typeddict,
    resolved,
    spark_schema,
    typeddicts,
)
from reelpulse.settings import Settings

CONTRACT = Contract(Settings(_env_file=None).schemas_dir)
EVENTS = list(CONTRACT)
IDS = [e.name for e in EVENTS]


def field(name: str, data_type: DataType, nullable: bool = False) -> StructField:
    return StructField(name, data_type, nullable)


def without_comments(data_type: DataType) -> DataType:
    """``data_type`` with every StructField's metadata dropped, as ``from_avro`` gives it."""
    if isinstance(data_type, StructType):
        return StructType([field(f.name, without_comments(f.dataType), f.nullable) for f in data_type.fields])
    if isinstance(data_type, ArrayType):
        return ArrayType(without_comments(data_type.elementType), data_type.containsNull)
    if isinstance(data_type, MapType):
        values = without_comments(data_type.valueType)
        return MapType(data_type.keyType, values, data_type.valueContainsNull)
    return data_type


ENVELOPE = StructType(
    [
        field("event_id", StringType()),
        field("event_time", TimestampType()),
        field("user_id", StringType()),
        field("profile_id", StringType()),
        field("session_id", StringType()),
        field(
            "device",
            StructType(
                [
                    field("device_id", StringType()),
                    field("device_type", StringType()),
                    field("os", StringType()),
                    field("app_version", StringType()),
                ]
            ),
        ),
        field("country", StringType()),
        field("client_ip", StringType()),
    ]
)

EXPECTED_SPARK = {
    "login": StructType(
        [
            field("envelope", ENVELOPE),
            field("success", BooleanType()),
            field("failure_reason", StringType(), nullable=True),
            field("auth_method", StringType()),
        ]
    ),
    "title": StructType(
        [
            field("title_id", StringType()),
            field("event_time", TimestampType()),
            field("name", StringType()),
            field("kind", StringType()),
            field("genres", ArrayType(StringType(), containsNull=False)),
            field("duration_s", IntegerType(), nullable=True),
            field("release_year", IntegerType(), nullable=True),
        ]
    ),
    "dead_letter": StructType(
        [
            field("dead_letter_id", StringType()),
            field("failed_at", TimestampType()),
            field("stage", StringType()),
            field("error_type", StringType()),
            field("reason", StringType()),
            field("source_topic", StringType(), nullable=True),
            field("source_partition", IntegerType(), nullable=True),
            field("source_offset", LongType(), nullable=True),
            field("schema_id", IntegerType(), nullable=True),
            field("original_key", BinaryType(), nullable=True),
            field("original_value", BinaryType(), nullable=True),
            field(
                "headers",
                ArrayType(
                    StructType([field("key", StringType()), field("value", BinaryType(), nullable=True)]),
                    containsNull=False,
                ),
            ),
        ]
    ),
}

# A schema that references named types after their first definition, by full name and by
# a name relative to the enclosing namespace, as a hand-written .avsc may.
REFERENCING = EventType(
    "referencing",
    {
        "type": "record",
        "name": "Referencing",
        "namespace": "test.events",
        "reelpulse.topic": "test",
        "reelpulse.key": "a.id",
        "fields": [
            {
                "name": "a",
                "doc": "First use: the definition.",
                "type": {
                    "type": "record",
                    "name": "Point",
                    "namespace": "test.common",
                    "fields": [
                        {"name": "id", "type": "string"},
                        {
                            "name": "level",
                            "type": {"type": "enum", "name": "Level", "symbols": ["LOW", "HIGH"]},
                        },
                    ],
                },
            },
            {"name": "b", "type": ["null", "test.common.Point"], "default": None},
            {"name": "levels", "type": {"type": "map", "values": "test.common.Level"}},
            {
                "name": "c",
                "type": {
                    "type": "record",
                    "name": "Local",
                    "fields": [{"name": "z", "type": "int"}],
                },
            },
            {"name": "d", "type": {"type": "array", "items": "Local"}},
            {"name": "n", "type": ["int", "long"]},
            {"name": "x", "type": ["null", "string", "double"]},
        ],
    },
)


@pytest.mark.parametrize("name", sorted(EXPECTED_SPARK))
def test_spark_schema_matches_from_avro_mapping(name: str) -> None:
    assert without_comments(spark_schema(CONTRACT[name])) == EXPECTED_SPARK[name]


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_every_schema_converts_to_spark_with_docs_as_comments(event: EventType) -> None:
    schema = spark_schema(event)
    assert StructType.fromJson(schema.jsonValue()) == schema
    assert schema.fieldNames() == [f["name"] for f in event.schema["fields"]]
    comments = dict(_spark_comments(schema))
    assert comments == {path: f["doc"] for path, f in walk_fields(event.resolved)}


def _spark_comments(data_type: DataType, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data_type, ArrayType):
        return _spark_comments(data_type.elementType, f"{prefix[:-1]}[].")
    if isinstance(data_type, MapType):
        return _spark_comments(data_type.valueType, f"{prefix[:-1]}{{}}.")
    if not isinstance(data_type, StructType):
        return []
    found: list[tuple[str, str]] = []
    for f in data_type.fields:
        found.append((f"{prefix}{f.name}", f.metadata["comment"]))
        found += _spark_comments(f.dataType, f"{prefix}{f.name}.")
    return found


def test_spark_schema_resolves_named_type_references() -> None:
    point = StructType([field("id", StringType()), field("level", StringType())])
    local = StructType([field("z", IntegerType())])
    expected = StructType(
        [
            field("a", point),
            field("b", point, nullable=True),
            field("levels", MapType(StringType(), StringType(), valueContainsNull=False)),
            field("c", local),
            field("d", ArrayType(local, containsNull=False)),
            field("n", LongType()),
            field(
                "x",
                StructType([field("member0", StringType(), True), field("member1", DoubleType(), True)]),
                nullable=True,
            ),
        ]
    )
    schema = spark_schema(REFERENCING)
    assert without_comments(schema) == expected
    assert schema["a"].metadata == {"comment": "First use: the definition."}


def test_resolved_rejects_unknown_and_recursive_types() -> None:
    with pytest.raises(ValueError, match="referenced before it is defined"):
        resolved({"type": "record", "name": "R", "fields": [{"name": "a", "type": "Nope"}]})
    recursive = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": "Node"}]}
    with pytest.raises(ValueError, match="recursive type 'Node'"):
        resolved(recursive)


def test_duckdb_types() -> None:
    assert duckdb_type({"type": "long", "logicalType": "timestamp-millis"}) == ("TIMESTAMP WITH TIME ZONE")
    assert duckdb_type({"type": "long", "logicalType": "local-timestamp-millis"}) == "TIMESTAMP"
    assert duckdb_type({"type": "string", "logicalType": "uuid"}) == "VARCHAR"
    assert duckdb_type(["null", "float"]) == "FLOAT"
    assert duckdb_type({"type": "array", "items": "boolean"}) == "BOOLEAN[]"
    assert duckdb_type({"type": "map", "values": "bytes"}) == "MAP(VARCHAR, BLOB)"
    assert duckdb_type({"type": "enum", "name": "E", "symbols": ["A"]}) == "VARCHAR"
    columns = dict(duckdb_columns(REFERENCING))
    assert columns["b"] == 'STRUCT("id" VARCHAR, "level" VARCHAR)'
    assert columns["d"] == 'STRUCT("z" INTEGER)[]'
    assert (columns["n"], columns["x"]) == ("BIGINT", "UNION(member0 VARCHAR, member1 DOUBLE)")
    with pytest.raises(ValueError, match="no empty STRUCT"):
        duckdb_type({"type": "record", "name": "Empty", "fields": []})


@pytest.mark.parametrize("event", [*EVENTS, REFERENCING], ids=[*IDS, "referencing"])
def test_duckdb_creates_every_event_table(event: EventType) -> None:
    with duckdb.connect() as db:
        db.execute(create_table(event))
        described = db.execute("SELECT column_name FROM (DESCRIBE t)").fetchall()
    assert [name for (name,) in described] == [f["name"] for f in event.schema["fields"]]


def create_table(event: EventType) -> str:
    columns = ", ".join(f'"{name}" {sql_type}' for name, sql_type in duckdb_columns(event))
    return f"CREATE TABLE t ({columns})"


def test_duckdb_row_from_a_hand_record_inserts() -> None:
    event = CONTRACT["playback_start"]
    record = playback_start()
    event.check(record)
    columns = duckdb_columns(event)
    with duckdb.connect() as db:
        db.execute("SET TimeZone = 'UTC'")
        db.execute(create_table(event))
        placeholders = ", ".join("?" for _ in columns)
        db.execute(f"INSERT INTO t VALUES ({placeholders})", [record[n] for n, _ in columns])
        row = db.execute("SELECT * FROM t").fetchone()
    assert row is not None
    assert dict(zip([n for n, _ in columns], row, strict=True)) == record


def playback_start() -> dict[str, Any]:
    at = datetime(2026, 3, 1, 20, 15, 0, 125000, tzinfo=UTC)
    device = {"device_id": "d-1", "device_type": "TV", "os": "tvOS 18", "app_version": "5.1.0"}
    envelope = {
        "event_id": "6f1c3e0e-8f63-4f5f-9e38-3d4f5f6a7b8c",
        "event_time": at,
        "user_id": "u-1",
        "profile_id": "p-1",
        "session_id": "0b6c5a4e-1d2f-4a3b-8c7d-6e5f4a3b2c1d",
        "device": device,
        "country": "NL",
        "client_ip": "198.51.100.7",
    }
    ladder = [
        {"bitrate_kbps": 800, "resolution": "P480", "codec": "h264"},
        {"bitrate_kbps": 6000, "resolution": "P1080", "codec": "hevc"},
    ]
    return {
        "envelope": envelope,
        "title_id": "tt-42",
        "rendition_ladder": ladder,
        "initial_bitrate_kbps": 800,
        "cdn_edge": "ams-3",
        "startup_time_ms": 640,
        "success": True,
        "start_position_ms": 0,
    }


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_typeddict_mirrors_the_schema(event: EventType) -> None:
    cls = python_typeddict(event)
    assert cls.__name__ == event.full_name.rpartition(".")[2]
    assert list(cls.__annotations__) == [f["name"] for f in event.schema["fields"]]
    for name, f in _enum_fields(event.schema):
        annotation = typing.get_type_hints(cls)[name]
        literal = next(a for a in (annotation, *typing.get_args(annotation)) if _is_literal(a))
        assert typing.get_args(literal) == tuple(f["type"]["symbols"])


def _enum_fields(schema: Any) -> list[tuple[str, Any]]:
    return [
        (f["name"], {"type": b})
        for f in schema["fields"]
        for b in (f["type"] if isinstance(f["type"], list) else [f["type"]])
        if isinstance(b, dict) and b["type"] == "enum"
    ]


def _is_literal(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Literal


def test_typeddict_nesting_and_nullability() -> None:
    classes = typeddicts(CONTRACT)
    assert set(classes) == set(CONTRACT.events)
    login = typing.get_type_hints(classes["login"])
    envelope = login["envelope"]
    assert envelope is typing.get_type_hints(classes["search"])["envelope"]
    assert typing.get_type_hints(envelope)["device"].__name__ == "Device"
    reason_type = dict(walk_fields(CONTRACT["login"].resolved))["failure_reason"]["type"][1]
    assert login["failure_reason"] == typing.Literal[tuple(reason_type["symbols"])] | None
    assert "BAD_PASSWORD" in reason_type["symbols"]
    title = typing.get_type_hints(classes["title"])
    assert title["genres"] == list[str]
    assert title["duration_s"] == int | None
    headers = typing.get_type_hints(classes["dead_letter"])["headers"]
    assert typing.get_type_hints(typing.get_args(headers)[0]) == {
        "key": str,
        "value": bytes | None,
    }
    referencing = typing.get_type_hints(python_typeddict(REFERENCING))
    assert referencing["b"] == referencing["a"] | None
    assert referencing["levels"] == dict[str, typing.Literal["LOW", "HIGH"]]
