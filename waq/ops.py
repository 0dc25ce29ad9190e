"""Operator commands: read the dead-letter queue, pause and resume numbers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from producer.status_store import StatusStore
from waq.settings import Settings
from worker.dead_letters import DeadLetter, DeadLetterStore
from worker.limits import RateConfig, RateLimiter
from worker.logs import shorten_phone
from worker.pauses import PauseStore

__all__ = ["dlq", "limits", "pause", "resume"]

T = TypeVar("T")

dlq = typer.Typer(help="Read the dead-letter queue.", no_args_is_help=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operator command; an unreachable Redis is a sentence, not a stack trace."""
    try:
        return asyncio.run(coro)
    except RedisConnectionError as exc:
        typer.echo(f"error: cannot reach Redis (WAQ_REDIS_URL): {exc}", err=True)
        raise typer.Exit(3) from None


def _redis(settings: Settings) -> Redis:
    redis: Redis = Redis.from_url(str(settings.redis_url))
    return redis


@dlq.command("list")
def dlq_list(
    code: Annotated[str | None, typer.Option(help="Only this error code, e.g. 131047.")] = None,
    suggestion: Annotated[
        str | None, typer.Option(help="Only this suggestion, e.g. send_template.")
    ] = None,
    phone_number_id: Annotated[str | None, typer.Option(help="Only this sender.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List dead letters, newest first."""

    async def run() -> list[DeadLetter]:
        redis = _redis(Settings())
        try:
            store = DeadLetterStore(
                redis, StatusStore(redis, retention_s=Settings().status_retention_s)
            )
            return await store.list(
                limit=limit, code=code, suggestion=suggestion, phone_number_id=phone_number_id
            )
        finally:
            await redis.aclose()

    letters = _run(run())
    if as_json:
        for letter in letters:
            typer.echo(letter.model_dump_json())
        return
    typer.echo(f"{'id':<35} {'to':<11} {'type':<11} {'code':<8} {'suggestion':<15} hint")
    for letter in letters:
        typer.echo(
            f"{letter.id:<35} {shorten_phone(letter.to):<11} {letter.type:<11} {letter.code!s:<8} "
            f"{letter.suggestion.value:<15} {letter.hint}"
        )


@dlq.command("show")
def dlq_show(
    message_id: Annotated[str, typer.Argument(help="The dead letter's message id.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
) -> None:
    """Show one dead letter: request, attempts, final error, hint."""

    async def run() -> DeadLetter | None:
        redis = _redis(Settings())
        try:
            return await DeadLetterStore(redis, StatusStore(redis, retention_s=60)).get(message_id)
        finally:
            await redis.aclose()

    letter = _run(run())
    if letter is None:
        typer.echo(f"error: no dead letter {message_id}", err=True)
        raise typer.Exit(1)
    typer.echo(letter.model_dump_json(indent=2) if as_json else _describe(letter))


def _describe(letter: DeadLetter) -> str:
    lines = [
        f"message    {letter.id}",
        f"from/to    {letter.phone_number_id} -> {letter.to} ({letter.type})",
        f"error      {letter.code}: {letter.error.get('title')}",
        f"details    {letter.error.get('details') or '-'}",
        f"suggestion {letter.suggestion.value}: {letter.hint}",
        "attempts:",
    ]
    lines += [
        f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.at))}Z {e.state.value:<9} "
        f"{e.detail or ''}"
        for e in letter.attempts
    ]
    lines.append("request:\n" + json.dumps(letter.request, indent=2))
    return "\n".join(lines)


def pause(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
    reason: Annotated[
        str, typer.Option(help="Why, for the other operators.")
    ] = "paused by an operator",
) -> None:
    """Stop sending from a number; its messages wait (nothing is dead-lettered)."""

    async def run() -> bool:
        redis = _redis(Settings())
        try:
            return await PauseStore(redis).pause(
                phone_number_id, reason=reason, code=None, by="operator"
            )
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {'paused' if _run(run()) else 'was already paused'}")


def resume(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
) -> None:
    """Resume sending from a paused number."""

    async def run() -> bool:
        redis = _redis(Settings())
        try:
            return await PauseStore(redis).resume(phone_number_id)
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {'resumed' if _run(run()) else 'was not paused'}")


limits = typer.Typer(
    help="Per-number throughput limits, shared by every worker.", no_args_is_help=True
)


@limits.command("set")
def limits_set(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
    mps: Annotated[
        float | None, typer.Option(help="Messages per second (Meta: 80, up to 1,000).")
    ] = None,
    default: Annotated[bool, typer.Option("--default", help="Back to WAQ_DEFAULT_MPS.")] = False,
) -> None:
    """Set a number's throughput; workers pick it up on their next send."""
    if (mps is None) == (not default):
        typer.echo("error: give --mps N or --default", err=True)
        raise typer.Exit(2)
    if mps is not None and mps <= 0:
        typer.echo("error: --mps must be positive", err=True)
        raise typer.Exit(2)
    settings = Settings()

    async def run() -> float:
        redis = _redis(settings)
        try:
            limiter = RateLimiter(redis, RateConfig(default_mps=settings.default_mps))
            await limiter.set_mps(phone_number_id, mps)
            return await limiter.mps(phone_number_id)
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {_run(run()):g} messages per second")


@limits.command("show")
def limits_show(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
) -> None:
    """Show a number's configured throughput."""
    settings = Settings()

    async def run() -> float:
        redis = _redis(settings)
        try:
            return await RateLimiter(redis, RateConfig(default_mps=settings.default_mps)).mps(
                phone_number_id
            )
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {_run(run()):g} messages per second")
