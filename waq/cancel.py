"""``waq cancel``: take messages back before they are handed to Meta."""

from __future__ import annotations

from typing import Annotated

import typer

from producer.broadcasts import Broadcasts
from producer.client import CancelResult
from waq._command import open_redis, producer_for, run
from waq.settings import Settings

__all__ = ["cancel"]


def cancel(
    message_ids: Annotated[
        list[str] | None, typer.Argument(help="Message ids (m_...).", show_default=False)
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="An idempotency key instead of an id (repeatable)."),
    ] = None,
    phone_number_id: Annotated[
        str | None, typer.Option(help="The sender of --key (WAQ_DEFAULT_PHONE_NUMBER_ID).")
    ] = None,
    broadcast: Annotated[
        str | None, typer.Option(help="Every unsent message of this broadcast.")
    ] = None,
) -> None:
    """Cancel scheduled, queued or retrying messages; one already sending is left alone."""
    settings = Settings()
    sender = phone_number_id or settings.default_phone_number_id
    if key and sender is None:
        typer.echo(
            "error: --key needs --phone-number-id (or WAQ_DEFAULT_PHONE_NUMBER_ID)", err=True
        )
        raise typer.Exit(2)
    if not message_ids and not key and not broadcast:
        typer.echo("error: give message ids, --key or --broadcast", err=True)
        raise typer.Exit(2)

    async def go() -> list[CancelResult]:
        redis = open_redis(settings)
        producer = producer_for(redis, settings)
        try:
            results = [await producer.cancel(m) for m in message_ids or []]
            for k in key or []:
                results.append(await producer.cancel(idempotency_key=k, phone_number_id=sender))
            if broadcast is not None:
                cancelled = await Broadcasts(producer).cancel(broadcast)
                if cancelled is None:
                    typer.echo(f"error: no broadcast {broadcast}", err=True)
                    raise typer.Exit(1)
                typer.echo(f"{broadcast}: {cancelled} unsent messages cancelled")
            return results
        finally:
            await redis.aclose()

    results = run(go())
    for result in results:
        if result.cancelled:
            typer.echo(f"{result.message_id}: cancelled")
        elif result.state is None:
            typer.echo(f"{result.message_id}: not found (or past its retention)")
        else:
            typer.echo(f"{result.message_id}: not cancelled, it is {result.state.value}")
    if not all(r.cancelled for r in results):
        raise typer.Exit(1)
