"""``waq optouts``: the customers who told a sender number to stop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from producer.opt_outs import OptOuts
from waq._command import open_redis, run
from waq.settings import Settings

__all__ = ["optouts"]

T = TypeVar("T")

optouts = typer.Typer(
    help="Opt-outs: customers who said STOP (or Meta reported 131050); marketing skips them.",
    no_args_is_help=True,
)

PhoneNumberId = Annotated[
    str | None, typer.Option(help="The sender (WAQ_DEFAULT_PHONE_NUMBER_ID).")
]


def _with(phone_number_id: str | None, work: Callable[[OptOuts, str], Awaitable[T]]) -> T:
    settings = Settings()
    sender = phone_number_id or settings.default_phone_number_id
    if sender is None:
        typer.echo("error: --phone-number-id (or WAQ_DEFAULT_PHONE_NUMBER_ID) is needed", err=True)
        raise typer.Exit(2)

    async def go() -> T:
        redis = open_redis(settings)
        try:
            return await work(OptOuts(redis), sender)
        finally:
            await redis.aclose()

    return run(go())


@optouts.command("list")
def list_(phone_number_id: PhoneNumberId = None) -> None:
    """Every customer on the sender's list."""
    customers = _with(phone_number_id, lambda store, sender: store.all(sender))
    for customer in customers:
        typer.echo(customer)
    if not customers:
        typer.echo("nobody opted out")


@optouts.command("add")
def add(customer: str, phone_number_id: PhoneNumberId = None) -> None:
    """Opt a customer out (an optout.added event)."""
    try:
        added = _with(phone_number_id, lambda store, sender: store.add(sender, customer))
    except ValueError as exc:
        typer.echo(f"error: customer: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{customer}: {'opted out' if added else 'had already opted out'}")


@optouts.command("remove")
def remove(customer: str, phone_number_id: PhoneNumberId = None) -> None:
    """Opt a customer back in (an optout.removed event)."""
    try:
        removed = _with(phone_number_id, lambda store, sender: store.remove(sender, customer))
    except ValueError as exc:
        typer.echo(f"error: customer: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{customer}: {'opted back in' if removed else 'was not on the list'}")
