"""What every sender number is doing, read from Redis: for ``waq status``, the console, metrics.

Every figure is kept by the step that changes it, so a read costs O(senders) however many
messages wait: a number's pending messages are a counter its lane keeps (a message counts
from enqueue until it is final), throttled numbers are an index the slowdown step keeps
(``keys.THROTTLED``), and a lane job in flight is arq's lease on the job its lane's token
names. No read here SCANs the keyspace: at 300,000 waiting conversations three SCANs took
26 s, past Prometheus' scrape timeout.
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
    """Read the whole picture: a few round trips, O(senders)."""
    now = time.time()
    senders = sorted(_text(n) for n in await redis.smembers(keys.SENDERS))  # type: ignore[misc]
    now_ms = int(now * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for phone_number_id in senders:
            pipe.hmget(keys.lane_job(phone_number_id), ["pending", "token"])
            pipe.zcount(keys.lane(phone_number_id), "-inf", now_ms)
            pipe.zcount(keys.bulk_lane(phone_number_id), "-inf", now_ms)
        pipe.zrangebyscore(keys.THROTTLED, now, "+inf")
        *answers, throttled_raw = await pipe.execute()
    jobs_of = answers[::3]
    pending = {
        phone_number_id: int(count)
        for phone_number_id, (count, _) in zip(senders, jobs_of, strict=True)
        if count is not None and int(count) > 0
    }
    due = sum(int(count) for i, count in enumerate(answers) if i % 3)
    throttled = {_text(scope) for scope in throttled_raw} - {APP_SCOPE}
    # A lane job in flight holds arq's lease on its id, which its lane's token names. Only
    # lane jobs count: arq keeps a cron run's lease after it ends (so a second worker does
    # not run the same run), and counting those would report idle workers as busy.
    leases = [
        _ARQ_IN_PROGRESS + lane_job_id(phone_number_id, _text(token))
        for phone_number_id, (_, token) in zip(senders, jobs_of, strict=True)
        if token is not None
    ]
    in_flight = int(await redis.exists(*leases)) if leases else 0
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
        slowdown = app_slowdown * (
            await limiter.slowdown(phone_number_id) if phone_number_id in throttled else 1.0
        )
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
