"""API keys: created, rotated and revoked by name, stored hashed, checked in constant time.

A key reads ``rp_<key id>_<secret>``: the key id (12 hex digits) finds the stored
credential without trying every hash; the secret is 32 random bytes (URL-safe base64).
Only a per-credential random salt and ``sha256(salt + secret)`` are stored. A fast hash is
enough here: the secret has 256 bits of entropy, so there is nothing to guess, and a
slow password hash (scrypt, bcrypt) would cost milliseconds on every request.

The file (``Settings.collector_keys_file``, default ``<state dir>/collector/api_keys.json``)
is written atomically with mode 0600. A running collector notices a change within a
second (it compares the file's inode, size and mtime), so a revoked key stops working
without a restart. Rotating gives a name a new key and lets the old one work for a grace
period, so devices can switch over without an outage.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector.errors import KeyFileError
from reelpulse.settings import Settings

PREFIX = "rp"
KEY_ID_BYTES = 6
SECRET_BYTES = 32
RELOAD_EVERY_S = 1.0
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Credential:
    """One issued key: its id, salt and hash, and when it stops working (if ever)."""

    key_id: str
    salt: str
    sha256: str
    created_at: float
    expires_at: float | None = None

    def matches(self, secret: str) -> bool:
        digest = hashlib.sha256(bytes.fromhex(self.salt) + secret.encode()).hexdigest()
        return hmac.compare_digest(digest, self.sha256)

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class Client:
    """A named client (an app, a device fleet) and its credentials."""

    name: str
    created_at: float
    credentials: tuple[Credential, ...] = field(default_factory=tuple)


def keys_path(settings: Settings) -> Path:
    return settings.collector_keys_file or settings.state_dir / "collector" / "api_keys.json"


def new_credential(now: float) -> tuple[str, Credential]:
    """A fresh key (shown once) and what is stored of it."""
    key_id = secrets.token_hex(KEY_ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    salt = secrets.token_bytes(16)
    digest = hashlib.sha256(salt + secret.encode()).hexdigest()
    return f"{PREFIX}_{key_id}_{secret}", Credential(key_id, salt.hex(), digest, now)


def split_key(key: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else ``None``."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 2 * KEY_ID_BYTES or not parts[2]:
        return None
    return parts[1], parts[2]


# --------------------------------------------------------------------------- the file


def load(path: Path) -> dict[str, Client]:
    """Every client in the key file (none if it does not exist)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {
        name: Client(name, entry["created_at"], tuple(Credential(**c) for c in entry["credentials"]))
        for name, entry in data.get("clients", {}).items()
    }


def save(path: Path, clients: dict[str, Client]) -> None:
    """Write the key file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "clients": {
            c.name: {"created_at": c.created_at, "credentials": [asdict(k) for k in c.credentials]}
            for c in clients.values()
        },
    }
    fd, tmp = tempfile.mkstemp(prefix=".api_keys.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(payload, out, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def create(path: Path, name: str, now: float | None = None) -> str:
    """Add a client; returns its key, which is never stored or shown again."""
    clients = load(path)
    if name in clients:
        raise KeyFileError(f"a client named {name!r} exists; rotate its key instead")
    now = time.time() if now is None else now
    key, credential = new_credential(now)
    clients[name] = Client(name, now, (credential,))
    save(path, clients)
    return key


def rotate(path: Path, name: str, grace_s: float, now: float | None = None) -> str:
    """Give ``name`` a new key; its current keys keep working for ``grace_s`` seconds."""
    clients = load(path)
    client = _existing(clients, name)
    now = time.time() if now is None else now
    key, credential = new_credential(now)
    ending = now + grace_s
    kept = tuple(
        Credential(c.key_id, c.salt, c.sha256, c.created_at, min(c.expires_at or ending, ending))
        for c in client.credentials
        if c.live(now) and grace_s > 0
    )
    clients[name] = Client(name, client.created_at, (*kept, credential))
    save(path, clients)
    return key


def revoke(path: Path, name: str) -> None:
    """Remove a client and every key it has, at once."""
    clients = load(path)
    _existing(clients, name)
    del clients[name]
    save(path, clients)


def _existing(clients: dict[str, Client], name: str) -> Client:
    if name not in clients:
        known = ", ".join(sorted(clients)) or "none"
        raise KeyFileError(f"no client named {name!r} (known: {known})")
    return clients[name]


def iso(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- checking keys


class KeyStore:
    """What the collector checks keys against; re-reads the file when it changes."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path, self._clock = path, clock
        self._by_id: dict[str, tuple[str, Credential]] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self.reload()

    def __len__(self) -> int:
        return len({name for name, _ in self._by_id.values()})

    def reload(self) -> None:
        signature = self._stat()
        if signature != self._signature:
            clients = load(self.path)
            self._by_id = {c.key_id: (n.name, c) for n in clients.values() for c in n.credentials}
            self._signature = signature

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def authenticate(self, key: str | None) -> str | None:
        """The client name of a valid, unexpired key, else ``None``."""
        now = self._clock()
        if now - self._checked_at >= RELOAD_EVERY_S:
            self._checked_at = now
            self.reload()
        parts = split_key(key) if key else None
        if parts is None:
            return None
        found = self._by_id.get(parts[0])
        if found is None or not found[1].live(now) or not found[1].matches(parts[1]):
            return None
        return found[0]
