"""Types derived from the event contract: Spark, DuckDB and Python views of ``schemas/*.avsc``.

Nothing here is retyped: every column, nesting level and nullability comes from the Avro
schema of an :class:`~reelpulse.contract.EventType`. The mappings are:

=====================  =======================  ==========================  =================
Avro                   Spark (``from_avro``)    DuckDB                      Python
=====================  =======================  ==========================  =================
record                 StructType               STRUCT(...)                 TypedDict
enum                   StringType               VARCHAR                     Literal[symbols]
array                  ArrayType                T[]                         list[T]
map                    MapType(string, T)       MAP(VARCHAR, T)             dict[str, T]
[null, X]              X, nullable              X                           X | None
int / long             Integer / LongType       INTEGER / BIGINT            int
float / double         Float / DoubleType       FLOAT / DOUBLE              float
boolean                BooleanType              BOOLEAN                     bool
string (uuid)          StringType               VARCHAR                     str
bytes / fixed          BinaryType               BLOB                        bytes
timestamp-millis       TimestampType            TIMESTAMP WITH TIME ZONE    int (UTC ms)
local-timestamp-*      TimestampNTZType         TIMESTAMP                   int
date                   DateType                 DATE                        int (days)
=====================  =======================  ==========================  =================

The Python types describe records as producers build them: timestamps as epoch
milliseconds, uuids as strings (fastavro's reader returns ``datetime`` and ``UUID``
objects for those logical types unless told not to).

Named types (records, enums, fixed) are written out at their first use and referenced by
name afterwards; :func:`resolved` replaces every reference by its definition, so the
converters below only ever see inline types. Recursive types are rejected: none of the
targets can hold them.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from reelpulse.contract import Contract, EventType, resolved

if TYPE_CHECKING:
    from pyspark.sql.types import DataType, StructType


def _non_null(branches: list[Any]) -> list[Any]:
    return [b for b in branches if _kind(b) != "null"]


def _kind(t: Any) -> str:
    return t if isinstance(t, str) else "union" if isinstance(t, list) else str(t["type"])


def _logical(t: Any) -> str | None:
    return t.get("logicalType") if isinstance(t, dict) else None


# --- Spark ----------------------------------------------------------------------------------


def spark_schema(event: EventType) -> StructType:
    """The Spark schema ``from_avro`` gives the event's value, with each field's Avro ``doc``
    kept as the StructField's ``"comment"`` metadata (``from_avro`` itself drops docs)."""
    data_type, _ = _spark(resolved(dict(event.schema)))
    return data_type  # type: ignore[return-value]


def _spark(t: Any) -> tuple[DataType, bool]:
    """``(Spark type, nullable)`` of a resolved Avro type, following Spark's SchemaConverters."""
    from pyspark.sql import types as st

    kind = _kind(t)
    if kind == "union":
        return _spark_union(t)
    if kind in ("record", "error"):
        return st.StructType([_spark_field(f) for f in t["fields"]]), False
    if kind == "array":
        items, contains_null = _spark(t["items"])
        return st.ArrayType(items, contains_null), False
    if kind == "map":
        values, value_null = _spark(t["values"])
        return st.MapType(st.StringType(), values, value_null), False
    return _spark_scalar(kind, t), kind == "null"


def _spark_field(f: Mapping[str, Any]) -> Any:
    from pyspark.sql.types import StructField

    data_type, nullable = _spark(f["type"])
    metadata = {"comment": f["doc"]} if f.get("doc") else {}
    return StructField(f["name"], data_type, nullable, metadata)


def _spark_union(branches: list[Any]) -> tuple[DataType, bool]:
    from pyspark.sql import types as st

    rest = _non_null(branches)
    if len(rest) < len(branches):
        if not rest:
            return st.NullType(), True
        return _spark(rest[0] if len(rest) == 1 else rest)[0], True
    kinds = {_kind(b) for b in rest}
    if len(rest) == 1:
        return _spark(rest[0])
    if len(rest) == 2 and kinds in ({"int", "long"}, {"float", "double"}):
        return (st.LongType() if "int" in kinds else st.DoubleType()), False
    members = [st.StructField(f"member{i}", _spark(b)[0], True) for i, b in enumerate(rest)]
    return st.StructType(members), False


def _spark_scalar(kind: str, t: Any) -> DataType:
    from pyspark.sql import types as st

    logical = _logical(t)
    if logical == "decimal" and kind in ("bytes", "fixed"):
        return st.DecimalType(t["precision"], t.get("scale", 0))
    if logical in ("timestamp-millis", "timestamp-micros") and kind == "long":
        return st.TimestampType()
    if logical in ("local-timestamp-millis", "local-timestamp-micros") and kind == "long":
        return st.TimestampNTZType()
    if logical == "date" and kind == "int":
        return st.DateType()
    simple = {
        "null": st.NullType, "boolean": st.BooleanType, "int": st.IntegerType,
        "long": st.LongType, "float": st.FloatType, "double": st.DoubleType,
        "bytes": st.BinaryType, "fixed": st.BinaryType, "string": st.StringType,
        "enum": st.StringType,
    }  # fmt: skip
    if kind not in simple:
        raise ValueError(f"Avro type {kind!r} has no Spark equivalent")
    return simple[kind]()


# --- DuckDB ---------------------------------------------------------------------------------

_DUCKDB_SCALARS = {
    "boolean": "BOOLEAN", "int": "INTEGER", "long": "BIGINT", "float": "FLOAT",
    "double": "DOUBLE", "bytes": "BLOB", "fixed": "BLOB", "string": "VARCHAR", "enum": "VARCHAR",
}  # fmt: skip
_DUCKDB_LOGICAL = {
    "timestamp-millis": "TIMESTAMP WITH TIME ZONE",
    "timestamp-micros": "TIMESTAMP WITH TIME ZONE",
    "local-timestamp-millis": "TIMESTAMP",
    "local-timestamp-micros": "TIMESTAMP",
    "date": "DATE",
    "uuid": "VARCHAR",
}


def duckdb_type(avro_type: Any) -> str:
    """DuckDB type of an Avro type (nullable unions map to their non-null branch: DuckDB
    columns are nullable; enums and uuids are VARCHAR)."""
    return _duck(resolved(avro_type))


def duckdb_columns(event: EventType) -> list[tuple[str, str]]:
    """``(column name, DuckDB type)`` of every top-level field, in schema order."""
    schema = resolved(dict(event.schema))
    return [(f["name"], _duck(f["type"])) for f in schema["fields"]]


def _duck(t: Any) -> str:
    kind = _kind(t)
    if kind == "union":
        return _duck_union(t)
    if kind in ("record", "error"):
        if not t["fields"]:
            raise ValueError(f"record {t['name']!r} has no fields: DuckDB has no empty STRUCT")
        return f"STRUCT({', '.join(_duck_member(f) for f in t['fields'])})"
    if kind == "array":
        return f"{_duck(t['items'])}[]"
    if kind == "map":
        return f"MAP(VARCHAR, {_duck(t['values'])})"
    logical = _logical(t)
    if logical == "decimal":
        return f"DECIMAL({t['precision']}, {t.get('scale', 0)})"
    if logical in _DUCKDB_LOGICAL:
        return _DUCKDB_LOGICAL[logical]
    if kind not in _DUCKDB_SCALARS:
        raise ValueError(f"Avro type {kind!r} has no DuckDB equivalent")
    return _DUCKDB_SCALARS[kind]


def _duck_member(f: Mapping[str, Any]) -> str:
    return f"{_quote(f['name'])} {_duck(f['type'])}"


def _duck_union(branches: list[Any]) -> str:
    rest = _non_null(branches)
    if not rest:
        raise ValueError("a union of only null has no DuckDB equivalent")
    kinds = {_kind(b) for b in rest}
    if len(rest) == 1:
        return _duck(rest[0])
    if len(rest) == 2 and kinds in ({"int", "long"}, {"float", "double"}):
        return "BIGINT" if "int" in kinds else "DOUBLE"  # widened, as Spark does
    return f"UNION({', '.join(f'member{i} {_duck(b)}' for i, b in enumerate(rest))})"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# --- Python ---------------------------------------------------------------------------------

_PYTHON_SCALARS: dict[str, Any] = {
    "null": None, "boolean": bool, "int": int, "long": int, "float": float, "double": float,
    "bytes": bytes, "fixed": bytes, "string": str,
}  # fmt: skip


def python_typeddict(event: EventType) -> type:
    """A ``TypedDict`` of the event's records: nested records are nested TypedDicts named
    by their short name, enums ``Literal`` of the symbols, nullable unions ``X | None``."""
    return _typeddict(resolved(dict(event.schema)), {})


def typeddicts(contract: Contract) -> dict[str, type]:
    """The TypedDict of every event type by name; shared records are one class."""
    classes: dict[str, type] = {}
    return {e.name: _typeddict(resolved(dict(e.schema)), classes) for e in contract}


def _typeddict(record: Mapping[str, Any], classes: dict[str, type]) -> type:
    full = str(record["name"])
    if full not in classes:
        fields = {f["name"]: _python(f["type"], classes) for f in record["fields"]}
        cls: type = TypedDict(full.rpartition(".")[2], fields)  # type: ignore[misc]
        cls.__doc__ = record.get("doc") or cls.__doc__
        classes[full] = cls
    return classes[full]


def _python(t: Any, classes: dict[str, type]) -> Any:
    kind = _kind(t)
    if kind == "union":
        rest = _non_null(t)
        ordered = rest + [b for b in t if b not in rest]  # None last: ``X | None``
        return functools.reduce(operator.or_, [_python(b, classes) for b in ordered])
    if kind in ("record", "error"):
        return _typeddict(t, classes)
    if kind == "enum":
        return Literal[tuple(t["symbols"])]
    if kind == "array":
        return list[_python(t["items"], classes)]  # type: ignore[misc]
    if kind == "map":
        return dict[str, _python(t["values"], classes)]  # type: ignore[misc]
    if kind not in _PYTHON_SCALARS:
        raise ValueError(f"Avro type {kind!r} has no Python equivalent")
    return _PYTHON_SCALARS[kind]
