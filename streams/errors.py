"""Exception types of the streams package, carrying the fields a caller needs."""

from __future__ import annotations

from reelpulse.errors import ReelpulseError


class StreamsError(ReelpulseError):
    """Base class of every error the streams package raises on purpose."""


class RulesError(StreamsError):
    """The rules configuration file is invalid; the message names the file and the entry."""

    def __init__(self, source: str, problem: str) -> None:
        self.source, self.problem = source, problem
        super().__init__(f"rules {source}: {problem}")


class DecodeFailure(StreamsError):
    """A record that cannot be decoded or accepted; ``error_type`` is the dead-letter class
    ('undecodable', 'unknown_schema_id', 'unexpected_event_type', 'schema_violation',
    'out_of_range_time')."""

    def __init__(self, error_type: str, reason: str, schema_id: int | None = None) -> None:
        self.error_type, self.reason, self.schema_id = error_type, reason, schema_id
        super().__init__(f"{error_type}: {reason}")


class WebhookError(StreamsError):
    """A webhook delivery failed; ``permanent`` says whether retrying can help."""

    def __init__(self, url: str, reason: str, permanent: bool) -> None:
        self.url, self.reason, self.permanent = url, reason, permanent
        super().__init__(f"webhook {url}: {reason}")
