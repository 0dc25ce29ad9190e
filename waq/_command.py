"""What every operator command shares: one Redis connection, and errors as sentences."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from producer.client import Producer
from producer.status_store import StatusStore
from waq.settings import Settings
from worker.dead_letters import DeadLetterStore

__all__ = ["dead_letter_store", "open_redis", "parse_age", "producer_for", "run"]

T = TypeVar("T")

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operator command; an unreachable Redis is a sentence, not a stack trace."""
    try:
        return asyncio.run(coro)
    except RedisConnectionError as exc:
        typer.echo(f"error: cannot reach Redis (WAQ_REDIS_URL): {exc}", err=True)
        raise typer.Exit(3) from None


def open_redis(settings: Settings) -> Redis:
    """A connection for one command (closed by the command)."""
    redis: Redis = Redis.from_url(str(settings.redis_url), socket_timeout=30)  # never hang
    return redis


def producer_for(redis: Redis, settings: Settings) -> Producer:
    """A producer as the gateway builds one: the queue, the retention, the conversation key."""
    key = settings.conversation_key
    return Producer(
        redis, queue_name=settings.queue_name, retention_s=settings.status_retention_s,
        conversation_key=key.get_secret_value() if key else None,
    )  # fmt: skip


def dead_letter_store(redis: Redis, settings: Settings) -> DeadLetterStore:
    """The dead-letter store on the configured queue and retention."""
    statuses = StatusStore(redis, retention_s=settings.status_retention_s)
    return DeadLetterStore(redis, statuses, queue_name=settings.queue_name)


def parse_age(value: str | None) -> float | None:
    """``90``, ``90s``, ``15m``, ``2h``, ``3d``, ``1w`` as seconds."""
    if value is None:
        return None
    match = _AGE.match(value)
    if match is None:
        raise typer.BadParameter(f"{value!r} is not an age like 30m, 2h or 3d")
    return float(match[1]) * _UNIT_S[match[2]]
