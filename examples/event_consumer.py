"""Read waq's events from the Redis stream with a consumer group, acknowledging each one handled.

Run several copies with the same ``--group`` and different ``--consumer`` names to share the
work. A copy that dies before acknowledging gets its events again when it comes back (it
reads its own unacknowledged entries first), so handle each event idempotently: dedupe on
``event.id``. See docs/events.md.

    python examples/event_consumer.py --redis-url redis://localhost:6379/0 --group billing
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from producer.events import Event
from producer.keys import EVENTS


async def consume(
    redis: Redis,
    group: str,
    consumer: str,
    handle: Callable[[Event], Awaitable[None]],
    *,
    stop_after: int | None = None,
    idle_exit_s: float | None = None,
) -> int:
    """Handle events until ``stop_after`` of them (or ``idle_exit_s`` without one)."""
    try:  # "0": a new group starts with every event still in the stream; "$": only new ones
        await redis.xgroup_create(EVENTS, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    handled = 0
    start = "0"  # first what this consumer was given and never acknowledged, then new events
    while stop_after is None or handled < stop_after:
        block_ms = int((idle_exit_s or 5) * 1000)
        # Never take more than it will handle: what it takes and leaves waits, unacknowledged.
        count = 100 if stop_after is None else min(100, stop_after - handled)
        answer = await redis.xreadgroup(
            group, consumer, {EVENTS: start}, count=count, block=block_ms
        )
        entries = [entry for _, batch in answer for entry in batch]
        if not entries:
            if start == "0":
                start = ">"
                continue
            if idle_exit_s is not None:
                break
            continue
        for entry_id, fields in entries:
            await handle(Event.from_entry(entry_id, fields))
            await redis.xack(EVENTS, group, entry_id)  # only once handled
            handled += 1
            if stop_after is not None and handled >= stop_after:
                break
    return handled


async def main() -> None:
    """Print each event as a JSON line (your handler goes where ``print_event`` is)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://localhost:6379/0")
    parser.add_argument("--group", default="example")
    parser.add_argument("--consumer", default="consumer-1")
    parser.add_argument("--count", type=int, default=None, help="stop after this many")
    parser.add_argument("--idle-exit", type=float, default=None, help="stop when idle this long")
    args = parser.parse_args()

    async def print_event(event: Event) -> None:
        print(event.model_dump_json(), flush=True)

    redis = Redis.from_url(args.redis_url)
    try:
        await consume(redis, args.group, args.consumer, print_event,
                      stop_after=args.count, idle_exit_s=args.idle_exit)  # fmt: skip
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
