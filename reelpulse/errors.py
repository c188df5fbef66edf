"""Exception types of the reelpulse package, carrying the fields a caller needs."""

from __future__ import annotations


class ReelpulseError(Exception):
    """Base class of every error reelpulse raises on purpose."""


class SchemaViolation(ReelpulseError, ValueError):
    """An event does not match its Avro schema."""

    def __init__(self, event_type: str, field: str, problem: str) -> None:
        self.event_type, self.field, self.problem = event_type, field, problem
        super().__init__(f"{event_type} event: field '{field}' {problem}")


class WireFormatError(ReelpulseError, ValueError):
    """Bytes that are not in the Confluent wire format."""


class DeliveryError(ReelpulseError):
    """Kafka did not acknowledge a produced record."""

    def __init__(self, topic: str, key: str | None, reason: str) -> None:
        self.topic, self.key, self.reason = topic, key, reason
        super().__init__(f"delivery to {topic} (key {key!r}) failed: {reason}")


class StackError(ReelpulseError):
    """The local stack cannot start, stop or be reached; the message says what to do."""


class RegistryError(ReelpulseError):
    """The schema registry refused or could not answer a request."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject, self.reason = subject, reason
        super().__init__(f"schema registry, subject {subject}: {reason}")
