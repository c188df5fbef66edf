"""The HTTP wire format, as pydantic models for the OpenAPI document only: requests are
parsed by ``collector.batch`` (orjson, then the Avro schema), never by these models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from collector.batch import ACCEPTED, NOT_ACCEPTED, REJECTED


class EventIn(BaseModel):
    """One event: its type (a schema in schemas/) and the record, as in the .avsc:
    nested records as objects, enums as strings, nullable fields as a value or null,
    timestamps as epoch milliseconds, UUIDs as strings."""

    type: str = Field(description="Event type: the name of its schema file, e.g. playback_heartbeat.")
    event: dict[str, Any] = Field(description="The record, field by field as its Avro schema says.")


class BatchIn(BaseModel):
    """A batch of events (at most ``REELPULSE_COLLECTOR_MAX_BATCH_EVENTS``)."""

    events: list[EventIn] = Field(min_length=1)


class EventResult(BaseModel):
    """What became of one event, in the order the events were sent."""

    status: Literal["accepted", "rejected", "not_accepted"] = Field(
        description=f"{ACCEPTED}: Kafka acknowledged it. {REJECTED}: invalid, kept in the "
        f"dead-letter topic; do not resend. {NOT_ACCEPTED}: Kafka did not acknowledge it in "
        "time (503); resend it with the same event_id."
    )
    event_id: str | None = Field(None, description="The event's event_id, when it has one.")
    error_type: str | None = Field(
        None,
        description="For rejected events: malformed_event, unknown_event_type, "
        "schema_violation or clock_skew.",
    )
    field: str | None = Field(None, description="The dotted path of the field at fault, if one is.")
    reason: str | None = Field(None, description="A sentence saying what is wrong.")


class BatchResult(BaseModel):
    """Counts and one result per event."""

    accepted: int
    rejected: int
    not_accepted: int
    results: list[EventResult]


class ErrorBody(BaseModel):
    """A request refused as a whole: no event in it was accepted."""

    error: str = Field(
        description="unauthorized, unsupported_media_type, unsupported_encoding, body_too_large, "
        "batch_too_large, empty_batch, malformed_gzip, malformed_json, malformed_batch, "
        "rate_limited or kafka_unavailable."
    )
    reason: str


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"model": model, "description": description}


EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json(BatchResult, "Every event accepted: Kafka acknowledged each one."),
    207: _json(BatchResult, "Some events accepted, the others rejected (see results)."),
    400: _json(ErrorBody, "Body is not gzip/JSON of the documented shape; kept as a dead letter."),
    401: _json(ErrorBody, "Missing, unknown, revoked or expired API key."),
    413: _json(ErrorBody, "Body larger than the limit (before or after gzip), or too many events."),
    415: _json(ErrorBody, "Content-Type is not application/json, or Content-Encoding not gzip."),
    422: _json(BatchResult, "Every event rejected (see results); each is in the dead-letter topic."),
    429: _json(ErrorBody, "This API key sends too fast; retry after Retry-After seconds."),
    503: _json(
        BatchResult,
        "Kafka did not acknowledge every record in time: events not_accepted must be resent "
        "(same event_id) after Retry-After seconds.",
    ),
}
