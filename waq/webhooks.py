"""``waq webhooks``: subscriptions that carry events out; ``waq events``: the stream itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from producer import keys
from producer.events import Event
from waq._command import open_redis, run
from waq.settings import Settings
from worker.subscriptions import SubscriptionSpec, SubscriptionStore

__all__ = ["events", "webhooks"]

T = TypeVar("T")

webhooks = typer.Typer(
    help="Webhook subscriptions: signed deliveries of events to your services.",
    no_args_is_help=True,
)
events = typer.Typer(help="The events stream every service can read.", no_args_is_help=True)


def _with_store(work: Callable[[SubscriptionStore], Awaitable[T]]) -> T:
    settings = Settings()

    async def go() -> T:
        redis = open_redis(settings)
        try:
            return await work(SubscriptionStore(redis, queue_name=settings.queue_name))
        finally:
            await redis.aclose()

    return run(go())


def _masked(secret: str) -> str:
    return "whsec_…" + secret[-4:]


def _missing(subscription_id: str) -> typer.Exit:
    typer.echo(f"error: no webhook subscription {subscription_id} (`waq webhooks list`)", err=True)
    return typer.Exit(1)


@webhooks.command("add")
def add(
    url: Annotated[str, typer.Argument(help="Where to POST events (https://).")],
    types: Annotated[
        str, typer.Option(help="Comma-separated event types; '*' is all but meta.webhook.")
    ] = "*",
    numbers: Annotated[
        str, typer.Option(help="Comma-separated sender phone_number_ids (default: all).")
    ] = "",
    description: Annotated[str, typer.Option(help="A note for operators.")] = "",
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 10,
    max_batch: Annotated[int, typer.Option(help="Events per request (1: no batching).")] = 1,
    buffer_s: Annotated[float, typer.Option(help="How long a batch waits to fill up.")] = 0.0,
) -> None:
    """Subscribe a URL; prints its id and secret (shown this once: keep it)."""
    try:
        spec = SubscriptionSpec(
            url=url,
            types=[t.strip() for t in types.split(",") if t.strip()],
            numbers=[n.strip() for n in numbers.split(",") if n.strip()],
            description=description,
            concurrency=concurrency,
            max_batch=max_batch,
            buffer_s=buffer_s,
        )
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field = ".".join(str(p) for p in error["loc"]) or "(root)"
            typer.echo(f"error: {field}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    made = _with_store(lambda store: store.add(spec))
    typer.echo(f"{made.id}  {made.url}  types={','.join(made.types)}")
    typer.echo(f"secret: {made.secret.get_secret_value()}  (shown once: verify deliveries with it)")


@webhooks.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="As JSON lines.")] = False,
) -> None:
    """Every subscription: its state, backlog, dead letters and deliveries."""

    async def read(store: SubscriptionStore) -> list[dict[str, Any]]:
        rows = []
        for s in await store.all():
            state, stats = await store.state(s.id), await store.stats(s.id)
            rows.append({
                "id": s.id, "url": s.url, "types": s.types, "numbers": s.numbers,
                "state": state.state, "reason": state.reason,
                "secret": _masked(s.secret.get_secret_value()), **stats.model_dump(),
            })  # fmt: skip
        return rows

    rows = _with_store(read)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    if not rows:
        typer.echo("no subscriptions (`waq webhooks add URL`)")
    for row in rows:
        why = f" ({row['reason']})" if row["reason"] else ""
        typer.echo(
            f"{row['id']}  {row['state']}{why}  {row['url']}  types={','.join(row['types'])}  "
            f"pending={row['pending']} delivered={row['delivered']} dead={row['dead']}"
        )


@webhooks.command("show")
def show(
    subscription_id: str,
    attempts: Annotated[int, typer.Option(help="How many recent attempts to show.")] = 10,
) -> None:
    """One subscription and its last delivery attempts (status, latency, answer)."""

    async def read(store: SubscriptionStore) -> tuple[Any, ...] | None:
        found = await store.get(subscription_id)
        if found is None:
            return None
        return (found, await store.state(subscription_id), await store.stats(subscription_id),
                await store.log(subscription_id, attempts))  # fmt: skip

    got = _with_store(read)
    if got is None:
        raise _missing(subscription_id)
    subscription, state, stats, log = got
    why = f" ({state.reason})" if state.reason else ""
    typer.echo(f"{subscription.id}  {state.state}{why}\n  url: {subscription.url}")
    typer.echo(f"  types: {','.join(subscription.types)}  numbers: "
               f"{','.join(subscription.numbers) or 'all'}")  # fmt: skip
    typer.echo(f"  {stats.model_dump()}")
    for line in log:
        at = time.strftime("%H:%M:%S", time.gmtime(line["at"]))
        answer = line["status"] if line["status"] is not None else line["error"]
        typer.echo(
            f"  {at}Z  {line['outcome']:<9} {answer}  {line['latency_ms']} ms  "
            f"{line['events']} event(s) from {line['event_id']}"
        )


@webhooks.command("test")
def test(subscription_id: str) -> None:
    """Queue a ``webhook.test`` event for it; `waq webhooks show` then shows the attempt."""

    async def go(store: SubscriptionStore) -> str | None:
        if await store.get(subscription_id) is None:
            return None
        return await store.send_test(subscription_id)

    event_id = _with_store(go)
    if event_id is None:
        raise _missing(subscription_id)
    typer.echo(f"queued {event_id}")


@webhooks.command("remove")
def remove(subscription_id: str) -> None:
    """Unsubscribe: drops it with its outbox and dead letters."""
    if not _with_store(lambda store: store.remove(subscription_id)):
        raise _missing(subscription_id)
    typer.echo(f"removed {subscription_id}")


@webhooks.command("pause")
def pause(
    subscription_id: str,
    reason: Annotated[str, typer.Option(help="Shown with its state.")] = "paused by an operator",
) -> None:
    """Stop delivering; new events wait in its dead letters until a replay."""

    async def go(store: SubscriptionStore) -> bool:
        if await store.get(subscription_id) is None:
            return False
        await store.pause(subscription_id, reason)
        return True

    if not _with_store(go):
        raise _missing(subscription_id)
    typer.echo(f"paused {subscription_id}")


@webhooks.command("resume")
def resume(subscription_id: str) -> None:
    """Deliver again (its dead letters stay: `waq webhooks replay`)."""

    async def go(store: SubscriptionStore) -> bool:
        if await store.get(subscription_id) is None:
            return False
        await store.resume(subscription_id)
        return True

    if not _with_store(go):
        raise _missing(subscription_id)
    typer.echo(f"resumed {subscription_id}")


@webhooks.command("dead")
def dead(
    subscription_id: str,
    limit: Annotated[int, typer.Option(help="How many, oldest first.")] = 20,
) -> None:
    """The events it gave up on, with why and the receiver's last status."""

    async def go(store: SubscriptionStore) -> Any:
        if await store.get(subscription_id) is None:
            return None
        return await store.dead(subscription_id, limit)

    found = _with_store(go)
    if found is None:
        raise _missing(subscription_id)
    if not found:
        typer.echo("no dead letters")
    for letter in found:
        typer.echo(f"{letter.event_id}  {letter.type}  status={letter.status}  {letter.reason}")


@webhooks.command("replay")
def replay(subscription_id: str) -> None:
    """Deliver its dead letters again, oldest first (and resume it)."""

    async def go(store: SubscriptionStore) -> int | None:
        if await store.get(subscription_id) is None:
            return None
        return await store.replay(subscription_id)

    replayed = _with_store(go)
    if replayed is None:
        raise _missing(subscription_id)
    typer.echo(f"replaying {replayed} event(s) to {subscription_id}")


@events.command("tail")
def tail(
    count: Annotated[int, typer.Option(help="Stop after this many (0: follow forever).")] = 0,
    last: Annotated[int, typer.Option(help="Start with this many past events.")] = 10,
    types: Annotated[str, typer.Option(help="Only these comma-separated types.")] = "",
) -> None:
    """Print events as JSON lines, as they are emitted (reads the stream, acknowledges none)."""
    wanted = {t.strip() for t in types.split(",") if t.strip()}
    settings = Settings()

    async def go() -> None:
        redis = open_redis(settings)
        printed = 0
        try:
            past = await redis.xrevrange(keys.EVENTS, count=last) if last else []
            cursor = past[0][0] if past else "$"
            batches = [list(reversed(past))]
            while True:
                for entry_id, fields in (item for batch in batches for item in batch):
                    event = Event.from_entry(entry_id, fields)
                    cursor = entry_id
                    if wanted and event.type not in wanted:
                        continue
                    typer.echo(event.model_dump_json())
                    printed += 1
                    if count and printed >= count:
                        return
                answer = await redis.xread({keys.EVENTS: cursor}, block=5000, count=100)
                batches = [entries for _, entries in answer]
        except (KeyboardInterrupt, asyncio.CancelledError):
            return
        finally:
            await redis.aclose()

    run(go())
