"""The device-like client: batches of 100, resends what a 503 did not accept (same event
ids), waits on 429, stops on a refusal; and the `reelpulse collector keys` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from collector import client as client_module
from collector.client import CollectorClient, post_events
from collector.errors import CollectorError
from collector.keys import KeyStore
from reelpulse.cli import app as cli

EVENTS = [("login", {"envelope": {"event_id": f"id-{i}"}, "n": i}) for i in range(250)]


class FakeCollector:
    """Answers from a script of statuses; records every batch it was sent."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.batches, self.headers = script, [], []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = orjson.loads(request.content)["events"]
        self.batches.append([e["event"]["n"] for e in events])
        self.headers.append(request.headers)
        status = self.script.pop(0) if self.script else 200
        if status in (401, 429):
            return httpx.Response(status, json={"error": "x", "reason": "y"}, headers={"Retry-After": "1"})
        results = [{"status": "accepted", "event_id": e["event"]["envelope"]["event_id"]} for e in events]
        if status == 503:  # the odd ones were not acknowledged
            results = [r if i % 2 == 0 else {**r, "status": "not_accepted"} for i, r in enumerate(results)]
        accepted = sum(r["status"] == "accepted" for r in results)
        body = {
            "accepted": accepted,
            "rejected": 0,
            "not_accepted": len(results) - accepted,
            "results": results,
        }
        return httpx.Response(status, json=body, headers={"Retry-After": "1"})


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    return waits


def make(fake: FakeCollector, **options: Any) -> CollectorClient:
    http = httpx.Client(transport=httpx.MockTransport(fake))
    return CollectorClient("http://collector", "rp_key", http=http, **options)


def test_events_go_in_batches_of_100_with_the_key() -> None:
    fake = FakeCollector([])
    with make(fake) as client:
        client.produce_all(EVENTS)
    assert [len(b) for b in fake.batches] == [100, 100, 50]
    assert fake.headers[0]["authorization"] == "Bearer rp_key"
    assert client.stats.accepted == 250


def test_a_503_resends_only_what_was_not_accepted(no_sleep: list[float]) -> None:
    fake = FakeCollector([503])
    with make(fake) as client:
        client.produce_all(EVENTS[:100])
    assert fake.batches[1] == list(range(1, 100, 2))
    assert client.stats.accepted == 100
    assert client.stats.retries == 1
    assert no_sleep == [1.0]


def test_a_429_waits_and_resends_the_batch(no_sleep: list[float]) -> None:
    fake = FakeCollector([429, 429])
    with make(fake) as client:
        client.produce_all(EVENTS[:10])
    assert fake.batches == [list(range(10))] * 3
    assert no_sleep == [1.0, 1.0]


def test_a_refusal_stops_the_client() -> None:
    with pytest.raises(CollectorError, match="HTTP 401"):
        post_events(
            "http://collector",
            "k",
            EVENTS[:5],
            http=httpx.Client(transport=httpx.MockTransport(FakeCollector([401]))),
        )


def test_giving_up_after_max_attempts() -> None:
    fake = FakeCollector([503] * 10)
    client = make(fake, max_attempts=3)
    client.produce_all(EVENTS[:4])
    with pytest.raises(CollectorError, match="not accepted after 3 attempts"):
        client.flush()


def test_keys_commands_create_list_rotate_revoke(tmp_path: Path) -> None:
    env = {"REELPULSE_COLLECTOR_KEYS_FILE": str(tmp_path / "keys.json")}
    runner = CliRunner()
    created = runner.invoke(cli, ["collector", "keys", "create", "tv-app"], env=env)
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert KeyStore(tmp_path / "keys.json").authenticate(key) == "tv-app"
    listed = runner.invoke(cli, ["collector", "keys", "list"], env=env)
    assert "tv-app" in listed.output
    assert key.split("_", 2)[2] not in listed.output
    assert "never" in listed.output
    rotated = runner.invoke(cli, ["collector", "keys", "rotate", "tv-app", "--grace-hours", "0"], env=env)
    new_key = rotated.output.strip().splitlines()[-1]
    store = KeyStore(tmp_path / "keys.json")
    assert (store.authenticate(key), store.authenticate(new_key)) == (None, "tv-app")
    assert runner.invoke(cli, ["collector", "keys", "revoke", "tv-app"], env=env).exit_code == 0
    again = runner.invoke(cli, ["collector", "keys", "revoke", "tv-app"], env=env)
    assert again.exit_code == 1
    assert "no client named 'tv-app'" in again.output
    assert json.loads((tmp_path / "keys.json").read_text())["clients"] == {}
