"""Dead-letter records (schemas/dead_letter.avsc) for input a stage could not accept: the
original key, value and headers untouched, where they came from, and why."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from streams.errors import DecodeFailure

Headers = Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None


def dead_letter(
    stage: str,
    failure: DecodeFailure,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    now_ms: int,
) -> dict[str, Any]:
    return {
        "dead_letter_id": str(uuid.uuid4()),
        "failed_at": now_ms,
        "stage": stage,
        "error_type": failure.error_type,
        "reason": failure.reason,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "schema_id": failure.schema_id,
        "original_key": key,
        "original_value": value,
        "headers": header_records(headers),
    }


def header_records(headers: Headers) -> list[dict[str, Any]]:
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [{"key": str(k), "value": v.encode() if isinstance(v, str) else v} for k, v in pairs]
