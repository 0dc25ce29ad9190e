"""The shared rate limiter, against a real Redis."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from redis.asyncio import Redis

from worker.limits import APP_SCOPE, RateConfig, RateLimiter

PNID = "106540352242922"


async def test_number_slots_are_evenly_spaced_below_the_rate(redis: Redis) -> None:
    """Each reservation gets its own slot, 1/rate apart (minus the safety margin): no herd."""
    limiter = RateLimiter(redis, RateConfig(default_mps=50, safety=0.0, pair_burst=1000))
    started = time.monotonic()
    slots = [await limiter.acquire(PNID, f"1650555{i:04d}") for i in range(40)]
    took = time.monotonic() - started
    assert all(s.granted for s in slots)
    waits = [s.wait_s for s in slots]
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    # Each call also takes time, so a gap is 1/50 s minus the call's own duration: bounds
    # that hold however slow the machine is, not a timing.
    assert all(gap <= 0.02 + 1e-6 for gap in gaps)
    assert 39 * 0.02 - took - 1e-3 <= waits[-1] <= 39 * 0.02 + 1e-6


async def test_long_waits_are_not_reserved(redis: Redis) -> None:
    """Past max_sleep_s the limiter reserves nothing and says how long to come back after."""
    limiter = RateLimiter(
        redis, RateConfig(default_mps=1, safety=0.0, max_sleep_s=0.25, pair_burst=1000)
    )
    assert (await limiter.acquire(PNID, "16505550000")).granted
    refused = await limiter.acquire(PNID, "16505559999")  # its slot is 1 s out
    assert not refused.granted
    assert refused.reason == "number"
    assert 0.25 < refused.wait_s <= 1.0
    again = await limiter.acquire(PNID, "16505559999")  # nothing was reserved by the refusal
    assert not again.granted
    assert again.wait_s <= refused.wait_s  # the same slot, nearer: not one more interval out


async def test_pair_burst_then_interval(redis: Redis) -> None:
    """A pair takes `burst` messages at once, then one per interval; others are untouched."""
    limiter = RateLimiter(redis, RateConfig(default_mps=1000, pair_burst=3, pair_interval_s=2.0))
    first = [await limiter.acquire(PNID, "16505551234") for _ in range(4)]
    assert [s.granted for s in first] == [True, True, True, False]
    assert first[3].reason == "pair"
    assert 1.0 < first[3].wait_s <= 2.0 * 1.03  # the interval (plus the safety margin)
    assert (await limiter.acquire(PNID, "16505550000")).granted


async def test_per_number_rate_is_configurable(redis: Redis) -> None:
    """A number's own mps overrides the default, for every worker."""
    limiter = RateLimiter(redis, RateConfig(default_mps=80, safety=0.0, pair_burst=1000))
    await limiter.set_mps(PNID, 1000)
    assert await limiter.mps(PNID) == 1000
    waits = [(await limiter.acquire(PNID, f"1650555{i:04d}")).wait_s for i in range(20)]
    assert waits[-1] < 19 / 80  # faster than the default would allow
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


async def test_slowed_number_is_spaced_wider(redis: Redis) -> None:
    """After a slowdown the same number of slots spans about twice the time."""
    limiter = RateLimiter(
        redis, RateConfig(default_mps=100, safety=0.0, pair_burst=1000, recover_s=600)
    )
    await limiter.slow_down(PNID)
    started = time.monotonic()
    waits = [(await limiter.acquire(PNID, f"1650555{i:04d}")).wait_s for i in range(11)]
    took = time.monotonic() - started
    assert 10 * 0.02 - took - 1e-3 <= waits[-1] <= 10 * 0.02 + 1e-3  # 50 mps, not 100


async def test_pair_back_off(redis: Redis) -> None:
    """131056 blocks that pair for the given delay and nobody else."""
    limiter = RateLimiter(redis, RateConfig(pair_burst=45))
    await limiter.back_off_pair(PNID, "16505551234", 4.0)
    blocked = await limiter.acquire(PNID, "16505551234")
    assert not blocked.granted
    assert 3.0 < blocked.wait_s <= 4.0
    assert (await limiter.acquire(PNID, "16505550000")).granted
