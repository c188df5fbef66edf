"""Validate-and-encode in one pass, generated from each event schema.

The contract's path (``EventType.check`` then ``contract.encode`` with fastavro) costs
about 17 µs per event (most of the CPU time of the collector and the producer). :func:`compile_codec` derives
from an event's resolved schema one plain Python function that checks each value's JSON
type and writes its Avro binary form as it goes, in 2-4 µs. It is a fast path, never
the judge: it returns ``None`` for anything it does not recognise as valid (a wrong
type, an unknown key, a value it cannot encode, a schema construct it does not handle),
and the caller then asks the contract (:func:`encode_checked`), whose verdict and
encoding are authoritative. It accepts only records the contract accepts and writes the
same bytes as fastavro (``tests/unit/test_codec.py`` checks both).

Handled: records, enums, arrays, ``[null, T]`` unions, every primitive, and the
pass-through logical types ``uuid`` (on strings) and ``timestamp-millis`` (on longs).
An event type whose schema has anything else (maps, fixed, other unions or logical
types) gets no fast codec and always takes the contract's path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from reelpulse.contract import HEADER, MAGIC_BYTE, EventType, encode

Codec = Callable[[Any], bytes | None]

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
PASS_THROUGH_LOGICAL = {"string": {"uuid"}, "long": {"timestamp-millis"}}
SMALL = [bytes([n]) for n in range(128)]
_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack


class Unsupported(ValueError):
    """A schema construct the generated codec does not handle."""


def zigzag(n: int) -> bytes:
    """Avro's variable-length zig-zag encoding of an int or long."""
    n = (n << 1) ^ (n >> 63)
    if n < 128:
        return SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def compile_codec(event: EventType, schema_id: int) -> Codec | None:
    """A fast validate-and-encode function for ``event``, or ``None`` if its schema has a
    construct the generator does not handle. The function returns the Confluent
    wire-format value, or ``None`` when the record is not plainly valid."""
    gen = _Generator()
    try:
        gen.record(event.resolved, "r", 1)
    except Unsupported:
        return None
    source = "def codec(r):\n    b = bytearray(HEADER)\n" + "".join(gen.lines) + "    return bytes(b)\n"
    namespace: dict[str, Any] = {
        **gen.constants,
        "HEADER": HEADER.pack(MAGIC_BYTE, schema_id),
        "zigzag": zigzag,
        "SMALL": SMALL,
        "pack_d": _pack_double,
        "pack_f": _pack_float,
    }
    exec(compile(source, f"<codec {event.name}>", "exec"), namespace)
    return _guarded(namespace["codec"])


def _guarded(codec: Callable[[Any], bytes | None]) -> Codec:
    def guarded(record: Any) -> bytes | None:
        try:
            return codec(record)
        except (KeyError, UnicodeError, OverflowError, struct.error):  # missing, surrogates, float32
            return None

    return guarded


def encode_checked(event: EventType, schema_id: int, record: Mapping[str, Any]) -> bytes:
    """The contract's path: raise ``SchemaViolation`` if invalid, else fastavro's bytes."""
    event.check(record)
    return encode(schema_id, event.parsed, record)


class _Generator:
    """Emits the body of ``codec(r)``: statements appending to bytearray ``b``."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._names = 0

    def fresh(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line + "\n")

    def constant(self, prefix: str, value: Any) -> str:
        name = self.fresh(prefix)
        self.constants[name] = value
        return name

    def value(self, schema: Any, var: str, depth: int) -> None:
        """Check ``var`` against ``schema`` and append its encoding (or return None)."""
        if isinstance(schema, list):
            self.union(schema, var, depth)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = None if isinstance(schema, str) else schema.get("logicalType")
        if logical is not None and logical not in PASS_THROUGH_LOGICAL.get(kind, ()):
            raise Unsupported(f"logical type {logical} on {kind}")
        handler = getattr(self, f"t_{kind}", None)
        if handler is None:
            raise Unsupported(f"type {kind}")
        handler(schema, var, depth)

    def record(self, schema: Mapping[str, Any], var: str, depth: int) -> None:
        """A dict with no key the schema lacks; a missing field takes its default (or
        ``None``, as fastavro does), which then has to be valid."""
        fields = schema["fields"]
        self.emit(depth, f"if type({var}) is not dict: return None")
        if all("default" not in f for f in fields):  # every field there, and nothing else
            self.emit(depth, f"if len({var}) != {len(fields)}: return None")
        else:
            names = self.constant("fields", frozenset(f["name"] for f in fields))
            self.emit(depth, f"if not {var}.keys() <= {names}: return None")
        for f in fields:
            item = self.fresh("v")
            if "default" in f:
                default = self.constant("default", f["default"])
                self.emit(depth, f"{item} = {var}.get({f['name']!r}, {default})")
            else:  # a KeyError means the field is missing: not plainly valid
                self.emit(depth, f"{item} = {var}[{f['name']!r}]")
            self.value(f["type"], item, depth)

    def t_record(self, schema: Any, var: str, depth: int) -> None:
        self.record(schema, var, depth)

    t_error = t_record

    def t_null(self, schema: Any, var: str, depth: int) -> None:
        self.emit(depth, f"if {var} is not None: return None")

    def t_boolean(self, schema: Any, var: str, depth: int) -> None:
        self.emit(depth, f"if {var} is True: b += b'\\x01'")
        self.emit(depth, f"elif {var} is False: b += b'\\x00'")
        self.emit(depth, "else: return None")

    def _integer(self, var: str, depth: int, bounds: tuple[int, int]) -> None:
        low, high = bounds
        self.emit(depth, f"if type({var}) is not int or not {low} <= {var} <= {high}: return None")
        self.emit(depth, f"b += SMALL[{var} << 1] if 0 <= {var} < 64 else zigzag({var})")

    def t_int(self, schema: Any, var: str, depth: int) -> None:
        self._integer(var, depth, INT_RANGE)

    def t_long(self, schema: Any, var: str, depth: int) -> None:
        self._integer(var, depth, LONG_RANGE)

    def t_double(self, schema: Any, var: str, depth: int) -> None:
        self.emit(depth, f"if type({var}) is not float and type({var}) is not int: return None")
        self.emit(depth, f"b += pack_d({var})")

    def t_float(self, schema: Any, var: str, depth: int) -> None:
        self.emit(depth, f"if type({var}) is not float and type({var}) is not int: return None")
        self.emit(depth, f"b += pack_f({var})")

    def t_string(self, schema: Any, var: str, depth: int) -> None:
        self.emit(depth, f"if type({var}) is not str: return None")
        self.emit(depth, f"{var} = {var}.encode()")
        self.emit(depth, f"b += SMALL[len({var}) << 1] if len({var}) < 64 else zigzag(len({var}))")
        self.emit(depth, f"b += {var}")

    def t_bytes(self, schema: Any, var: str, depth: int) -> None:
        self.emit(depth, "return None")  # JSON has no bytes: the contract says why

    def t_enum(self, schema: Any, var: str, depth: int) -> None:
        index = self.constant("enum", {s: zigzag(i) for i, s in enumerate(schema["symbols"])})
        self.emit(depth, f"if type({var}) is not str or {var} not in {index}: return None")
        self.emit(depth, f"b += {index}[{var}]")

    def t_array(self, schema: Any, var: str, depth: int) -> None:
        item = self.fresh("i")
        self.emit(depth, f"if type({var}) is not list: return None")
        self.emit(depth, f"if {var}:")
        self.emit(depth + 1, f"b += zigzag(len({var}))")
        self.emit(depth + 1, f"for {item} in {var}:")
        self.value(schema["items"], item, depth + 2)
        self.emit(depth, "b += b'\\x00'")

    def union(self, branches: list[Any], var: str, depth: int) -> None:
        if len(branches) != 2 or "null" not in branches:
            raise Unsupported("unions other than [null, T]")
        null_index = branches.index("null")
        other = branches[1 - null_index]
        self.emit(depth, f"if {var} is None: b += {zigzag(null_index)!r}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"b += {zigzag(1 - null_index)!r}")
        self.value(other, var, depth + 1)
