"""One round trip for several commands and scripts: redis-py pipelines, minus a round trip.

redis-py's pipeline sends ``SCRIPT EXISTS`` before every ``execute`` that holds a script,
which turns the one round trip a pipeline is for into two. ``Pipelined`` loads each script
once per process instead (``SCRIPT LOAD`` is idempotent), then sends plain EVALSHA. Since
every script of a pipeline is then loaded, a NOSCRIPT answer means Redis lost them (a
restart, a SCRIPT FLUSH), and the pipeline is loaded and run again. Callers queue only
steps that may run twice: after a restart, if another process reloaded one script in
between, a step before the failed one may repeat (at worst, a history event twice).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

__all__ = ["Pipelined"]


class Pipelined:
    """Runs pipelines of commands and scripts on one Redis, one round trip each."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._loaded: set[str] = set()

    async def execute(self, fill: Callable[[Pipeline], Awaitable[None]]) -> list[Any]:
        """Run the commands ``fill`` queues; answers in order."""
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                await fill(pipe)
                scripts = list(pipe.scripts)
                pipe.scripts.clear()  # no SCRIPT EXISTS round trip: loaded below, once
                for script in scripts:
                    if script.sha not in self._loaded:
                        await self.redis.script_load(script.script)
                        self._loaded.add(script.sha)
                try:
                    return list(await pipe.execute())
                except NoScriptError:
                    if attempt == 2:
                        raise
                    self._loaded.clear()
        raise AssertionError("unreachable")  # pragma: no cover
