"""``waq broadcast``: a template to many recipients, from a CSV, watched to its end."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError

from producer.broadcasts import BroadcastProgress, Broadcasts, BroadcastSpec, recipients_from_csv
from producer.errors import InvalidRequest
from waq._command import open_redis, producer_for, run
from waq.settings import Settings

__all__ = ["broadcast"]

T = TypeVar("T")

broadcast = typer.Typer(
    help="Broadcasts: one template to many recipients, each with its own parameters.",
    no_args_is_help=True,
)


def _with(work: Callable[[Broadcasts], Awaitable[T]]) -> T:
    settings = Settings()

    async def go() -> T:
        redis = open_redis(settings)
        producer = producer_for(redis, settings)
        try:
            return await work(Broadcasts(producer))
        finally:
            await redis.aclose()

    return run(go())


def _line(progress: BroadcastProgress) -> str:
    f = progress.funnel
    width = 30
    filled = int(width * progress.done / max(progress.total, 1))
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {progress.done}/{progress.total} done · sent {f['sent']} · delivered "
        f"{f['delivered']} · read {f['read']} · dead {f['dead']} · cancelled {f['cancelled']}"
    )


def _watch(broadcast_id: str, every_s: float = 1.0) -> BroadcastProgress:
    """Print the funnel until the broadcast is done: one redrawn line on a terminal."""
    tty = sys.stdout.isatty()

    async def poll(broadcasts: Broadcasts) -> BroadcastProgress:
        while True:
            progress = await broadcasts.get(broadcast_id)
            assert progress is not None
            end = "\r" if tty and not progress.finished else "\n"
            typer.echo(_line(progress), nl=False)
            typer.echo(end, nl=False)
            if progress.finished:
                return progress
            await asyncio.sleep(every_s)

    return _with(poll)


@broadcast.command("create")
def create(
    template: Annotated[str, typer.Option(help="An approved template's name.")],
    csv: Annotated[Path, typer.Option(help="A 'to' column, then one column per body parameter.")],
    language: Annotated[str, typer.Option(help="The template's language.")] = "en_US",
    phone_number_id: Annotated[
        str | None, typer.Option(help="The sender (WAQ_DEFAULT_PHONE_NUMBER_ID).")
    ] = None,
    send_at: Annotated[
        datetime | None, typer.Option(help="Send at this time (ISO 8601, with an offset).")
    ] = None,
    name: Annotated[str, typer.Option(help="A name for operators.")] = "",
    share: Annotated[
        float | None, typer.Option(help="At most this share of the number's limit (0-1).")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Show its progress until it is done.")] = True,
) -> None:
    """Queue the broadcast (a CSV with a bad row is refused whole), then watch it."""
    settings = Settings()
    sender = phone_number_id or settings.default_phone_number_id
    if sender is None:
        typer.echo("error: --phone-number-id (or WAQ_DEFAULT_PHONE_NUMBER_ID) is needed", err=True)
        raise typer.Exit(2)
    try:
        spec = BroadcastSpec(
            phone_number_id=sender, template=template, language=language,
            recipients=recipients_from_csv(csv.read_text()), send_at=send_at, name=name,
            share=share,
        )  # fmt: skip
    except InvalidRequest as exc:
        for error in exc.errors:
            typer.echo(f"error: {error.field}: {error.message}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        for error in InvalidRequest.from_validation_error(exc).errors:
            typer.echo(f"error: {error.field}: {error.message}", err=True)
        raise typer.Exit(2) from None
    started = time.monotonic()
    made, created = _with(lambda broadcasts: broadcasts.create(spec))
    verb = "queued" if created else "was already queued (the same upload)"
    typer.echo(f"{made.id}: {made.total} recipients {verb} in {time.monotonic() - started:.1f} s")
    if watch:
        _watch(made.id)


@broadcast.command("show")
def show(
    broadcast_id: str,
    watch: Annotated[bool, typer.Option(help="Keep showing until it is done.")] = False,
) -> None:
    """Its state and funnel."""
    progress = _with(lambda broadcasts: broadcasts.get(broadcast_id))
    if progress is None:
        typer.echo(f"error: no broadcast {broadcast_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{progress.id}  {progress.state}  {progress.template} ({progress.language})")
    if watch:
        _watch(broadcast_id)
    else:
        typer.echo(_line(progress))


def _act(broadcast_id: str, action: str) -> None:
    async def go(broadcasts: Broadcasts) -> object:
        if action == "pause":
            return await broadcasts.pause(broadcast_id)
        if action == "resume":
            return await broadcasts.resume(broadcast_id)
        return await broadcasts.cancel(broadcast_id)

    result = _with(go)
    if result is None or result is False:
        typer.echo(f"error: no broadcast {broadcast_id}", err=True)
        raise typer.Exit(1)
    done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
    extra = f": {result} unsent messages cancelled" if action == "cancel" else ""
    typer.echo(f"{broadcast_id} {done}{extra}")


@broadcast.command("pause")
def pause(broadcast_id: str) -> None:
    """Hold its unsent messages."""
    _act(broadcast_id, "pause")


@broadcast.command("resume")
def resume(broadcast_id: str) -> None:
    """Let them go again."""
    _act(broadcast_id, "resume")


@broadcast.command("cancel")
def cancel(broadcast_id: str) -> None:
    """Cancel every message of it not yet handed to Meta."""
    _act(broadcast_id, "cancel")
