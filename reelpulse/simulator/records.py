"""Building blocks of event records: seeded UUIDs and the shared client envelope."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from reelpulse.simulator.world import Device, User

_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


def uuid4(rng: random.Random) -> str:
    """A random (version 4) UUID string drawn from ``rng``; equal to
    ``str(uuid.UUID(int=rng.getrandbits(128), version=4))``, twice as fast."""
    h = f"{(rng.getrandbits(128) & _CLEAR) | _VERSION_4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Who:
    """Who an event comes from: account, profile, session, device and network location."""

    user: User
    profile_id: str
    session_id: str
    device: Device
    country: str
    ip: str

    def envelope(self, rng: random.Random, event_time: int) -> dict[str, Any]:
        """A fresh envelope record (its own dicts, so a consumer may change it safely)."""
        d = self.device
        return {
            "event_id": uuid4(rng),
            "event_time": event_time,
            "user_id": self.user.user_id,
            "profile_id": self.profile_id,
            "session_id": self.session_id,
            "device": {
                "device_id": d.device_id,
                "device_type": d.device_type,
                "os": d.os,
                "app_version": d.app_version,
            },
            "country": self.country,
            "client_ip": self.ip,
        }
