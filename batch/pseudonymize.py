"""Keyed pseudonymization of personal fields: HMAC-SHA256, hex, computed in the JVM.

Spark SQL has no ``hmac`` function, and ``sha2(key || value)`` is not a keyed hash (it is
open to length extension and is not what auditors mean by HMAC). HMAC (RFC 2104) is two
nested hashes with the key XOR-ed into fixed pads:

    HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m))

where ``K'`` is the key padded with zeros to the 64-byte block (hashed first when longer).
The pads are computed once in Python; both hashes are Spark's built-in ``sha2``, so the
whole thing is a plain column expression (no Python UDF, no serialization to Python
workers) and equals ``hmac.new(key, value.encode(), sha256).hexdigest()`` for every value.

A null stays null. The same value and key always give the same pseudonym, so joins and
distinct counts still work; without the key the value cannot be recovered or tested.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from reelpulse.contract import EventType

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

BLOCK_BYTES = 64
MIN_KEY_BYTES = 16
ENVELOPE = "envelope"


class PseudonymizationKeyError(ValueError):
    """The pseudonymization key is missing or too short to be a secret."""


def pads(key: bytes) -> tuple[bytes, bytes]:
    """``(K' ^ ipad, K' ^ opad)`` of RFC 2104 for SHA-256 (64-byte block)."""
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymizationKeyError(
            f"the pseudonymization key has {len(key)} bytes; use a random secret of at least "
            f"{MIN_KEY_BYTES} bytes"
        )
    if len(key) > BLOCK_BYTES:
        key = hashlib.sha256(key).digest()
    key = key.ljust(BLOCK_BYTES, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hmac_sha256_hex(column: Column, key: bytes) -> Column:
    """Hex HMAC-SHA256 of a string (UTF-8) or binary column under ``key``."""
    from pyspark.sql import functions as F

    inner_pad, outer_pad = pads(key)
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), column.cast("binary")), 256))
    return F.sha2(F.concat(F.lit(outer_pad), inner), 256)


def pii_columns(event: EventType) -> tuple[str, ...]:
    """Silver column of every field the contract marks ``pii``: envelope fields are
    flattened to their own name (``envelope.device.device_id`` -> ``device_id``); any
    other field is pseudonymized as its whole top-level column."""
    return tuple(dict.fromkeys(silver_column(path) for path in event.pii_fields))


def silver_column(path: str) -> str:
    parts = path.split(".")
    if parts[0] == ENVELOPE and len(parts) > 1:
        return parts[-1]
    return parts[0].split("[")[0].split("{")[0]


def pseudonymize(frame: DataFrame, columns: tuple[str, ...], key: bytes) -> DataFrame:
    """Replace each of ``columns`` by its keyed hash (strings and bytes directly, any
    other type through its JSON text)."""
    from pyspark.sql import functions as F

    types = dict(frame.dtypes)
    replaced = {}
    for name in columns:
        value = F.col(name) if types[name] in ("string", "binary") else F.to_json(F.col(name))
        replaced[name] = hmac_sha256_hex(value, key)
    return frame.withColumns(replaced) if replaced else frame
