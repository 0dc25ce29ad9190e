"""Meta's rate limits as a lane's claim books them, and the limiter's reactions, on real Redis.

The claim (``producer.transitions``) books every slot in production; these tests claim as a
lane job does and read the slots it handed out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from producer import ClaimLimits, Producer, keys
from producer.recipient import wa_id_of
from producer.transitions import Claim, Outcome, Transitions
from tests.support import TEMPLATE
from worker.limits import APP_SCOPE, RateConfig, RateLimiter

PNID = "106540352242922"
OPEN = 1e12  # every window open: these tests are about the limits


def to(i: int) -> str:
    return f"+1650555{i:04d}"


async def enqueue(redis: Redis, recipients: list[str]) -> list[str]:
    """One message to each recipient, in order; their ids."""
    answers = await Producer(redis).enqueue_many(
        [{"phone_number_id": PNID, "to": r, "message": TEMPLATE} for r in recipients]
    )
    return [a.message_id for a in answers]


async def claim(redis: Redis, **limits: Any) -> Claim:
    transitions = Transitions(redis, retention_s=3600)
    chosen = dataclasses.replace(ClaimLimits(window_s=OPEN), **limits)
    return await transitions.claim(PNID, "1", chosen, app_factor=1.0, may_idle=False)


async def test_number_slots_are_evenly_spaced_below_the_rate(redis: Redis) -> None:
    """One claim books each message its own slot, 1/rate apart (minus the safety margin)."""
    await enqueue(redis, [to(i) for i in range(40)])
    batch = await claim(redis, default_mps=50, safety=0.0, horizon_s=1.0, pair_burst=1000)
    slots = [m.slot_s for m in batch.messages]
    assert len(slots) == 40
    assert slots[0] == pytest.approx(0.0, abs=1e-5)
    assert all(b - a == pytest.approx(0.02, abs=1e-5) for a, b in itertools.pairwise(slots))
    safer = await Producer(redis).enqueue(
        {"phone_number_id": PNID, "to": to(99), "message": TEMPLATE}
    )
    [next_one] = (await claim(redis, default_mps=50, safety=0.5, horizon_s=2.0)).messages
    assert next_one.message_id == safer.message_id
    assert next_one.slot_s > 40 * 0.02 - 0.05  # after the booked ones, however slow the call


async def test_a_claim_books_no_slot_beyond_its_horizon(redis: Redis) -> None:
    """Past the horizon a claim books nothing and says when to look again."""
    await enqueue(redis, [to(1), to(2)])
    first = await claim(redis, default_mps=1, safety=0.0, horizon_s=0.25, pair_burst=1000)
    assert len(first.messages) == 1
    booked = float(await redis.get(keys.number_rate(PNID)) or 0)
    refused = await claim(redis, default_mps=1, safety=0.0, horizon_s=0.25, pair_burst=1000)
    assert refused.kind == "wait"
    assert refused.wait_s is not None
    assert 0.5 < refused.wait_s <= 0.75
    assert float(await redis.get(keys.number_rate(PNID)) or 0) == booked  # nothing reserved


async def test_pair_burst_then_interval(redis: Redis) -> None:
    """A customer takes `burst` messages in a row, then waits an interval; others do not."""
    transitions = Transitions(redis, retention_s=3600)
    limits = ClaimLimits(window_s=OPEN, default_mps=1000, pair_burst=3, pair_interval_s=2.0)
    ids = await enqueue(redis, [to(1)] * 4)
    for message_id in ids[:3]:  # each is its conversation's head in turn
        [claimed] = (
            await transitions.claim(PNID, "1", limits, app_factor=1.0, may_idle=False)
        ).messages
        assert claimed.message_id == message_id
        outcome = Outcome.accepted(message_id, wa_id_of(to(1)), attempt=1, wamid=f"w.{message_id}",
                                   sent_at=time.time())  # fmt: skip
        await transitions.settle(PNID, [outcome], limits)
    held = await transitions.claim(PNID, "1", limits, app_factor=1.0, may_idle=False)
    assert held.messages == []
    due_ms = await redis.zscore(keys.lane(PNID), ids[3])
    assert due_ms is not None
    assert 1.0 < due_ms / 1000 - time.time() <= 2.0
    other = await enqueue(redis, [to(2)])
    [claimed] = (
        await transitions.claim(PNID, "1", limits, app_factor=1.0, may_idle=False)
    ).messages
    assert claimed.message_id == other[0]


async def test_per_number_rate_is_configurable(redis: Redis) -> None:
    """A number's own mps (set once, read by every worker's claims) overrides the default."""
    limiter = RateLimiter(redis, RateConfig(default_mps=80))
    await limiter.set_mps(PNID, 1000)
    assert await limiter.mps(PNID) == 1000
    await enqueue(redis, [to(i) for i in range(20)])
    batch = await claim(redis, default_mps=80, safety=0.0, pair_burst=1000)
    assert batch.messages[-1].slot_s == pytest.approx(19 / 1000, abs=1e-5)
    await limiter.set_mps(PNID, None)
    assert await limiter.mps(PNID) == 80


async def test_slowdown_halves_then_recovers(redis: Redis) -> None:
    """130429 halves the rate (the divisor doubles) and the divisor decays back to 1."""
    limiter = RateLimiter(redis, RateConfig(recover_s=30, slowdown_cooldown_s=0.05))
    assert await limiter.slow_down(PNID) == pytest.approx(2.0, abs=0.01)
    assert await limiter.slow_down(PNID) <= 2.0  # the same burst of refusals: halved once
    await asyncio.sleep(0.06)
    assert 2.0 < await limiter.slow_down(PNID) <= 4.0  # 2 decayed a little, then doubled
    quick = RateLimiter(redis, RateConfig(recover_s=0.2, slowdown_cooldown_s=0.05))
    assert await quick.slow_down(APP_SCOPE) == pytest.approx(2.0, abs=0.01)
    await asyncio.sleep(0.25)
    assert await quick.slowdown(APP_SCOPE) == 1.0  # recovered
    assert await quick.slow_down(APP_SCOPE) == pytest.approx(2.0, abs=0.01)  # halved afresh


async def test_a_slowed_number_is_spaced_wider(redis: Redis) -> None:
    """After a slowdown the claim spaces the same messages twice as far apart."""
    await RateLimiter(redis, RateConfig(recover_s=600)).slow_down(PNID)
    await enqueue(redis, [to(i) for i in range(11)])
    batch = await claim(redis, default_mps=100, safety=0.0, pair_burst=1000, recover_s=600)
    assert batch.messages[-1].slot_s == pytest.approx(10 * 0.02, rel=0.01)  # 50 mps, not 100


async def test_pair_back_off_and_release(redis: Redis) -> None:
    """131056 blocks that customer for the delay and nobody else; a slot Meta refused (so the
    customer got nothing) is given back."""
    limiter = RateLimiter(redis, RateConfig(pair_burst=45))
    await limiter.back_off_pair(PNID, wa_id_of(to(1)), 4.0)
    blocked, free = await enqueue(redis, [to(1), to(2)])
    batch = await claim(redis, default_mps=1000)
    assert [m.message_id for m in batch.messages] == [free]
    due_ms = await redis.zscore(keys.lane(PNID), blocked)
    assert due_ms is not None
    assert 3.0 < due_ms / 1000 - time.time() <= 4.0
    before = float(await redis.get(keys.pair_rate(PNID, wa_id_of(to(2)))) or 0)
    await limiter.release_pair(PNID, wa_id_of(to(2)))
    after = float(await redis.get(keys.pair_rate(PNID, wa_id_of(to(2)))) or 0)
    assert after == pytest.approx(max(time.time(), before - 6.0 * 1.03), abs=0.05)
