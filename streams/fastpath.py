"""Two changes to faust-streaming 0.15.3's consumer, applied by :func:`install` when a
worker starts (never at import), each measured on this project's 2-core machine:

1. ``Consumer._drain_messages`` hands every fetched record to the conductor through
   ``Service.wait_first(callback(message), suspend_flow.wait())``, which wraps each record
   in four asyncio futures. An agent that does nothing but count then tops out at about
   11,000 records/s; calling the callback directly while the flow is not suspended (the
   original path is kept while it is) lifts that to about 35,000 records/s.
2. The aiokafka consumer is built with ``fetch_max_wait_ms=1500`` hard-coded. While the
   partitions with data are buffered, the only fetch in flight is for empty partitions
   (Faust's own ``__assignor-__leader`` topic), and the broker holds it for 1.5 s: new
   records wait that long. The worker uses ``FETCH_MAX_WAIT_MS`` instead.

Both replace private functions, so :func:`install` refuses to run on any other version of
the originals (their source hashes are pinned here; a Faust upgrade must re-check them).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.errors import StreamsError

FETCH_MAX_WAIT_MS = 20
EXPECTED = {
    "Consumer._drain_messages": "44a2500309e83c63",
    "AIOKafkaConsumerThread._create_worker_consumer": "c2701bfc3e6f6cad",
}
_THREAD = faust_aiokafka.AIOKafkaConsumerThread
_ORIGINALS: dict[str, Any] = {
    "Consumer._drain_messages": faust_consumer.Consumer._drain_messages,
    "AIOKafkaConsumerThread._create_worker_consumer": _THREAD._create_worker_consumer,
}


def source_hash(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def check() -> None:
    """Raise unless the Faust functions replaced here are the versions they were written for."""
    for name, function in _ORIGINALS.items():
        found = source_hash(function)
        if found != EXPECTED[name]:
            raise StreamsError(
                f"faust's {name} changed (source hash {found}, expected {EXPECTED[name]}): "
                "re-check streams/fastpath.py against the new faust-streaming version"
            )


def install() -> None:
    """Apply both changes (idempotent)."""
    check()
    faust_consumer.Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _ORIGINALS["AIOKafkaConsumerThread._create_worker_consumer"](self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    return consumer


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - runs in workers
    """faust 0.15.3's ``Consumer._drain_messages`` with the per-record ``wait_first`` only
    while the flow is suspended (rebalancing)."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
    acks_enabled_for = self.app.topics.acks_enabled_for
    suspended = self.suspend_flow.is_set
    fetching = faust_consumer.CONSUMER_FETCHING
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(fetching)
            records = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if self._commit_every is not None and self._n_acked >= self._commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if suspended():
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            await callback(message)
                        set_read_offset(tp, offset)
                unset_flag(fetching)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(fetching)
