"""API keys: hashed at rest, shown once, rotated with a grace period, revoked at once,
and noticed by a running collector without a restart."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from collector import keys
from collector.errors import KeyFileError
from collector.keys import KeyStore
from collector.limits import RateLimiter, TokenBucket, retry_after


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_key_is_stored_only_as_a_salted_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = keys.create(path, "android-app")
    key_id, secret = keys.split_key(key) or ("", "")
    text = path.read_text()
    assert secret not in text
    assert key_id in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credential = json.loads(text)["clients"]["android-app"]["credentials"][0]
    assert len(credential["sha256"]) == 64
    assert len(credential["salt"]) == 32


def test_only_the_exact_key_authenticates(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = keys.create(path, "tv-app")
    store = KeyStore(path)
    assert store.authenticate(key) == "tv-app"
    for wrong in (None, "", key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "rp_nothing", "Bearer x"):
        assert store.authenticate(wrong) is None


def test_two_clients_do_not_share_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    a, b = keys.create(path, "a"), keys.create(path, "b")
    store = KeyStore(path)
    assert (store.authenticate(a), store.authenticate(b)) == ("a", "b")
    forged = f"rp_{keys.split_key(a)[0]}_{keys.split_key(b)[1]}"  # type: ignore[index]
    assert store.authenticate(forged) is None


def test_create_refuses_a_name_twice_and_unknown_names_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys.create(path, "web")
    with pytest.raises(KeyFileError, match="exists"):
        keys.create(path, "web")
    with pytest.raises(KeyFileError, match="no client named 'nope'"):
        keys.rotate(path, "nope", 0)
    with pytest.raises(KeyFileError, match="no client named"):
        keys.revoke(path, "nope")


def test_rotation_keeps_the_old_key_for_the_grace_period_only(tmp_path: Path) -> None:
    path, clock = tmp_path / "keys.json", Clock()
    old = keys.create(path, "ios-app", now=clock.now)
    new = keys.rotate(path, "ios-app", grace_s=3600, now=clock.now)
    store = KeyStore(path, clock)
    assert store.authenticate(old) == store.authenticate(new) == "ios-app"
    clock.now += 3601
    assert store.authenticate(old) is None
    assert store.authenticate(new) == "ios-app"


def test_rotation_without_grace_ends_the_old_key_now(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    old = keys.create(path, "tv")
    new = keys.rotate(path, "tv", grace_s=0)
    store = KeyStore(path)
    assert (store.authenticate(old), store.authenticate(new)) == (None, "tv")
    assert len(keys.load(path)["tv"].credentials) == 1


def test_a_running_store_notices_revocation_within_a_second(tmp_path: Path) -> None:
    path, clock = tmp_path / "keys.json", Clock()
    key = keys.create(path, "web")
    store = KeyStore(path, clock)
    assert store.authenticate(key) == "web"
    keys.revoke(path, "web")
    later = keys.create(path, "later")
    clock.now += keys.RELOAD_EVERY_S
    assert store.authenticate(key) is None
    assert store.authenticate(later) == "later"


def test_no_key_file_means_no_client(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "missing.json")
    assert len(store) == 0
    assert store.authenticate("rp_0123456789ab_secret") is None


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket.full(rate=100, capacity=200, now=0.0)
    assert bucket.take(200, 0.0) == 0
    assert bucket.take(50, 0.0) == pytest.approx(0.5)
    assert bucket.take(50, 0.5) == 0
    assert bucket.take(1, 0.5) == pytest.approx(0.01)
    assert bucket.take(201, 100.0) == float("inf")
    assert bucket.tokens == 200


def test_rate_limits_are_per_client() -> None:
    limiter = RateLimiter(rate=10, burst=10)
    assert limiter.take("a", 10, 0.0) == 0
    assert limiter.take("a", 1, 0.0) > 0
    assert limiter.take("b", 10, 0.0) == 0


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: str) -> None:
    assert retry_after(wait) == header
