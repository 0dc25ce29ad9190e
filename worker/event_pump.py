"""The event pump: copies new events from the stream into the outboxes of the subscriptions.

Every worker process runs one, beside its jobs. Each step is one script (``FANOUT``) that
reads the events after a shared cursor, copies them and moves the cursor, atomically: two
pumps never copy an event twice nor out of order, and a pump that dies mid-way loses
nothing (the cursor had not moved). Between steps a pump blocks on the stream (``XREAD``)
for up to a second, so an event reaches its outboxes within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from producer import keys
from worker import outbox_scripts
from worker.metrics import WorkerMetrics
from worker.subscriptions import SubscriptionStore

__all__ = ["EventPump"]

log = structlog.get_logger("waq.events")

_BLOCK_MS: Final = 1000


class EventPump:
    """Runs the fan-out step whenever the stream has new events."""

    def __init__(
        self,
        redis: Redis,
        store: SubscriptionStore,
        *,
        maxlen: int = 1_000_000,
        batch: int = 500,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.maxlen = maxlen
        self.batch = batch
        self.metrics = metrics
        self.stopping = False
        self._fanout = redis.register_script(outbox_scripts.FANOUT)

    async def step(self) -> int:
        """Copy up to ``batch`` new events into the outboxes; how many it read."""
        read, started, counts = await self._fanout(
            keys=[keys.EVENTS, keys.EVENTS_CURSOR, keys.WEBHOOK_SUBSCRIPTIONS],
            args=[self.batch, self.maxlen],
        )
        tokens = [(_text(started[i]), _text(started[i + 1])) for i in range(0, len(started), 2)]
        await self.store.start(tokens)
        if self.metrics is not None:
            for i in range(0, len(counts), 2):
                self.metrics.events.labels(type=_text(counts[i])).inc(int(counts[i + 1]))
        return int(read)

    async def run(self) -> None:
        """Pump until stopped; a Redis error is logged and retried, never fatal."""
        backoff = 0.5
        while not self.stopping:
            try:
                if await self.step() >= self.batch:
                    continue
                cursor = await self.redis.get(keys.EVENTS_CURSOR)
                await self.redis.xread(
                    {keys.EVENTS: _text(cursor) if cursor else "0-0"}, count=1, block=_BLOCK_MS
                )
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                log.warning("events.pump_error", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def stop(self, task: asyncio.Task[None] | None) -> None:
        """Stop a running pump and wait for it to end.

        A flag as well as a cancel: a worker stuck at SIGTERM (one run in three of the fault
        suite) showed, in its task stacks logged on SIGUSR2, its shutdown waiting on a pump
        that was back in ``XREAD`` after the one cancel: the cancel had not ended it. The flag
        ends the loop within a block, and the cancel is repeated until it has.
        """
        self.stopping = True
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_BLOCK_MS / 1000 + 0.5)
        with contextlib.suppress(asyncio.CancelledError, RedisError):
            await task


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
