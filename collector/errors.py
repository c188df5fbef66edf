"""Exception types of the collector package."""

from __future__ import annotations

from reelpulse.errors import ReelpulseError


class CollectorError(ReelpulseError):
    """The collector cannot start, a key command cannot be done, or a client call failed."""


class KeyFileError(CollectorError):
    """A client name that does not exist, or exists already, in the key file."""
