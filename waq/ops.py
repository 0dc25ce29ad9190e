"""Operator commands for numbers: status, pause and resume, throughput limits."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from producer.transitions import Transitions
from waq._command import open_redis, run
from waq.settings import Settings
from worker.limits import RateConfig, RateLimiter
from worker.memory import MemoryReport, read_memory
from worker.overview import NumberState, Overview, known_numbers, read_overview
from worker.pauses import PauseStore

__all__ = ["limits", "pause", "resume", "status"]


def status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Each sender number's state (sending, paused, throttled), the queue, and Redis memory."""
    settings = Settings()

    async def read() -> tuple[Overview, MemoryReport]:
        redis = open_redis(settings)
        try:
            overview = await read_overview(
                redis, queue_name=settings.queue_name, default_mps=settings.default_mps
            )
            return overview, await read_memory(redis)
        finally:
            await redis.aclose()

    overview, memory = run(read())
    if as_json:
        typer.echo(
            json.dumps(
                {**overview.model_dump(mode="json"), "memory": memory.model_dump(mode="json")},
                indent=2,
            )
        )
        return
    workers = "workers polling" if overview.workers_alive else "NO WORKER is polling the queue"
    typer.echo(
        f"queue {overview.queue_depth} messages ({overview.queue_due} due now), "
        f"{overview.in_flight} lane jobs running, {overview.dead_letters} dead letters; {workers}"
    )
    if not overview.numbers:
        typer.echo("no sender numbers seen yet")
        return
    typer.echo(f"{'number':<18} {'state':<10} {'pending':>8} {'dead':>6} {'mps':>7}  why")
    for number in overview.numbers:
        why = ""
        if number.state is NumberState.PAUSED:
            since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(number.paused_since or 0))
            code = f" ({number.paused_code})" if number.paused_code else ""
            why = f"{number.paused_reason}{code}, by {number.paused_by} since {since}"
        elif number.state is NumberState.THROTTLED:
            why = f"Meta throttled it: rate divided by {number.slowdown:g}, recovering"
        typer.echo(
            f"{number.phone_number_id:<18} {number.state.value:<10} {number.pending:>8} "
            f"{number.dead_letters:>6} {number.mps:>7g}  {why}"
        )
    _print_memory(memory)


def _print_memory(memory: MemoryReport) -> None:
    typer.echo(
        f"\nmemory: {_size(memory.used_bytes)} used, {memory.total_keys:,} keys "
        f"(by kind, estimated from {memory.sampled} random keys)"
    )
    for kind in memory.kinds:
        typer.echo(f"  {kind.kind:<26} {'~' if kind.keys > 1 else ' '}{kind.keys:>10,} keys "
                   f"{_size(kind.bytes):>10}")  # fmt: skip


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def pause(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
    reason: Annotated[
        str, typer.Option(help="Why, for the other operators.")
    ] = "paused by an operator",
    force: Annotated[
        bool, typer.Option("--force", help="Pause a number waq has never seen (e.g. before use).")
    ] = False,
) -> None:
    """Stop sending from a number; its messages wait (nothing is dead-lettered)."""
    settings = Settings()

    async def go() -> bool | None:
        redis = open_redis(settings)
        try:
            if not force and phone_number_id not in await known_numbers(redis):
                return None
            return await PauseStore(redis).pause(
                phone_number_id, reason=reason, code=None, by="operator"
            )
        finally:
            await redis.aclose()

    paused = run(go())
    if paused is None:
        typer.echo(
            f"waq has never seen number {phone_number_id}: no message was queued from it. "
            "Check the id (`waq status` lists the known ones), or pass --force to pause it anyway.",
            err=True,
        )
        raise typer.Exit(2)
    typer.echo(f"{phone_number_id}: {'paused' if paused else 'was already paused'}")


def resume(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
) -> None:
    """Resume sending from a paused number."""
    settings = Settings()

    async def go() -> bool:
        redis = open_redis(settings)
        try:
            resumed = await PauseStore(redis).resume(phone_number_id)
            if resumed:  # its lane's job waits out the pause check: start one now
                transitions = Transitions(
                    redis, retention_s=settings.status_retention_s, queue_name=settings.queue_name
                )
                await transitions.wake(phone_number_id, replace=True)
            return resumed
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {'resumed' if run(go()) else 'was not paused'}")


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

    async def go() -> float:
        redis = open_redis(settings)
        try:
            limiter = RateLimiter(redis, RateConfig(default_mps=settings.default_mps))
            await limiter.set_mps(phone_number_id, mps)
            return await limiter.mps(phone_number_id)
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {run(go()):g} messages per second")


@limits.command("show")
def limits_show(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
) -> None:
    """Show a number's configured throughput."""
    settings = Settings()

    async def read() -> float:
        redis = open_redis(settings)
        try:
            return await RateLimiter(redis, RateConfig(default_mps=settings.default_mps)).mps(
                phone_number_id
            )
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {run(read()):g} messages per second")
