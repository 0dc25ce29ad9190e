"""What every sender number is doing, read from Redis: for ``waq status``, the console, metrics.

A number's pending messages are a counter its lane keeps (a message counts from enqueue
until it is final), one read per number. Throttled numbers are found by SCAN, and in-flight
jobs are arq's lease keys (one per running lane job).
"""

from __future__ import annotations

import time
from enum import StrEnum

from pydantic import BaseModel
from redis.asyncio import Redis

from producer import keys
from producer.transitions import lane_job_id
from worker.limits import APP_SCOPE, RateConfig, RateLimiter
from worker.pauses import PauseStore
from worker.runner import HEALTH_KEY_SUFFIX

__all__ = ["NumberOverview", "NumberState", "Overview", "known_numbers", "read_overview"]

_ARQ_IN_PROGRESS = "arq:in-progress:"


class NumberState(StrEnum):
    """A sender number's state, as an operator reads it."""

    SENDING = "sending"
    """Messages are waiting and going out."""
    IDLE = "idle"
    """Nothing waits for this number."""
    PAUSED = "paused"
    """Nothing goes until someone (or the health probe) resumes it."""
    THROTTLED = "throttled"
    """Meta slowed it down (130429, or 4/80007 for the whole app); the rate is recovering."""


class NumberOverview(BaseModel):
    """One sender number."""

    phone_number_id: str
    state: NumberState
    pending: int
    """Messages not yet final: queued, waiting their turn, retrying or in flight."""
    dead_letters: int
    mps: float
    """The configured rate."""
    slowdown: float
    """The divisor Meta's throttling put on the rate (1 = none)."""
    paused_reason: str | None = None
    paused_code: int | None = None
    paused_since: float | None = None
    paused_by: str | None = None


class Overview(BaseModel):
    """Every known sender number, and the queue as a whole."""

    read_at: float
    queue_depth: int
    """Messages not yet final, over every number."""
    queue_due: int
    """Of those, the ones due now (each conversation's next message, once its time came)."""
    lane_jobs: int
    """Jobs in arq's queue: a lane job per active sender, running or asleep, and cron jobs."""
    in_flight: int
    """Lane jobs a worker holds right now."""
    dead_letters: int
    workers_alive: bool
    numbers: list[NumberOverview]


async def known_numbers(redis: Redis) -> set[str]:
    """Every sender number waq has a trace of: enqueued from, paused, limited, dead-lettered."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.SENDERS)
        pipe.hkeys(keys.PAUSED_NUMBERS)
        pipe.hkeys(keys.RATE_LIMITS)
        pipe.hkeys(keys.DEAD_LETTER_COUNTS)
        senders, paused, limited, counted = await pipe.execute()
    numbers = {_text(n) for n in (*senders, *paused, *limited)}
    numbers.update(
        label.removeprefix("number:")
        for label in map(_text, counted)
        if label.startswith("number:")
    )
    return numbers


async def read_overview(
    redis: Redis, *, queue_name: str = keys.DEFAULT_QUEUE, default_mps: float = 80.0
) -> Overview:
    """Read the whole picture (a few round trips and two SCANs)."""
    now = time.time()
    senders = sorted(_text(n) for n in await redis.smembers(keys.SENDERS))  # type: ignore[misc]
    now_ms = int(now * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for phone_number_id in senders:
            pipe.hget(keys.lane_job(phone_number_id), "pending")
            pipe.zcount(keys.lane(phone_number_id), "-inf", now_ms)
            pipe.zcount(keys.bulk_lane(phone_number_id), "-inf", now_ms)
        answers = await pipe.execute()
    pending = {
        phone_number_id: int(count)
        for phone_number_id, count in zip(senders, answers[::3], strict=True)
        if count is not None and int(count) > 0
    }
    due = sum(int(count) for i, count in enumerate(answers) if i % 3)
    throttled = set()
    async for key in redis.scan_iter(match=keys.slowdown("*"), count=1000):
        throttled.add(_text(key).partition("{")[2].partition("}")[0])
    throttled.discard(APP_SCOPE)
    in_flight = 0
    # Lane jobs only: arq keeps a cron run's lease after it ends, so it stops a second worker
    # from running the same run, and counting those would report idle workers as busy.
    async for _ in redis.scan_iter(match=_ARQ_IN_PROGRESS + lane_job_id("*", "*"), count=1000):
        in_flight += 1
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(queue_name)
        pipe.zcard(keys.DEAD_LETTERS)
        pipe.exists(queue_name + HEALTH_KEY_SUFFIX)
        pipe.hgetall(keys.DEAD_LETTER_COUNTS)
        pipe.hgetall(keys.RATE_LIMITS)
        jobs, dead, alive, counts, rates = await pipe.execute()
    dead_by_number = {
        label.removeprefix("number:"): int(value)
        for label, value in ((_text(k), v) for k, v in counts.items())
        if label.startswith("number:")
    }
    mps = {_text(k): float(v) for k, v in rates.items()}
    pauses = await PauseStore(redis).all()
    limiter = RateLimiter(redis, RateConfig(default_mps=default_mps))
    app_slowdown = await limiter.slowdown(APP_SCOPE)
    numbers = []
    seen = {*pending, *pauses, *mps, *dead_by_number, *throttled, *senders}
    for phone_number_id in sorted(seen):
        slowdown = app_slowdown * await limiter.slowdown(phone_number_id)
        pause = pauses.get(phone_number_id)
        waiting = pending.get(phone_number_id, 0)
        if pause is not None:
            state = NumberState.PAUSED
        elif slowdown > 1.01:
            state = NumberState.THROTTLED
        else:
            state = NumberState.SENDING if waiting else NumberState.IDLE
        numbers.append(
            NumberOverview(
                phone_number_id=phone_number_id,
                state=state,
                pending=waiting,
                dead_letters=dead_by_number.get(phone_number_id, 0),
                mps=mps.get(phone_number_id, default_mps),
                slowdown=round(slowdown, 2),
                paused_reason=pause.reason if pause else None,
                paused_code=pause.code if pause else None,
                paused_since=pause.since if pause else None,
                paused_by=pause.by if pause else None,
            )
        )
    return Overview(
        read_at=now,
        queue_depth=sum(pending.values()),
        queue_due=due,
        lane_jobs=int(jobs),
        in_flight=in_flight,
        dead_letters=int(dead),
        workers_alive=bool(alive),
        numbers=numbers,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
