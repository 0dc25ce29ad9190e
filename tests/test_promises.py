"""Promises the docs make that no other test held: resend after the reconcile wait, Meta's
throttles, slot pacing, the window margin, retention. Real Valkey, the sandbox over HTTP,
arq workers in burst mode; each test asserts the state a run leaves behind."""

from __future__ import annotations

import asyncio
import time

from pydantic import SecretStr
from redis.asyncio import Redis

from producer import ClaimLimits, keys
from producer.status import MessageState
from sandbox import SandboxClient
from tests.support import ACCESS_TOKEN, CUSTOMER, PNID, TEMPLATE, Pipeline
from worker.delivery import Delivery, DeliveryConfig
from worker.graph import GraphClient
from worker.lane import LaneJob, _LaneRun
from worker.limits import APP_SCOPE, RateConfig, RateLimiter
from worker.windows import WINDOW_S


async def refusing(sandbox: SandboxClient, *, code: int, times: int) -> asyncio.Task[None]:
    """From now on the fake Meta answers every send with ``code``, until it has done so
    ``times`` times (the task returned heals it)."""
    await sandbox.set_number(PNID, send_error_code=code)

    async def heal() -> None:
        while (await sandbox.stats())["outcomes"].get(str(code), 0) < times:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the count lives in the sandbox: nothing to wait on
        await sandbox.set_number(PNID, send_error_code=None)

    return asyncio.create_task(heal())


async def test_resend_policy_sends_again_after_the_reconcile_wait(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """No answer and no status webhook: under the default `resend` policy the message waits
    the reconcile wait, then goes again (the duplicate the docs warn about) and is accepted."""
    await pipeline.customer_writes(sandbox)
    await sandbox.set_faults(drop_ratio=1)
    enqueued = await pipeline.send()

    async def heal() -> None:  # the first answer is dropped; the resend is answered
        while not await sandbox.ledger():  # noqa: ASYNC110 - another process's state
            await asyncio.sleep(0.01)
        await sandbox.set_faults(drop_ratio=0)

    healer = asyncio.create_task(heal())
    started = time.monotonic()
    await pipeline.run_worker(delivery=DeliveryConfig(reconcile_wait_s=0.5, reconcile_check_s=0.05))
    took = time.monotonic() - started
    await healer
    status = await pipeline.status(enqueued.message_id)
    ledger = await sandbox.ledger()
    assert [e["biz_opaque_callback_data"] for e in ledger] == [enqueued.message_id] * 2
    assert status.state is MessageState.ACCEPTED
    assert status.wamid == ledger[1]["wamid"]
    assert took >= 0.5  # it waited for a webhook before sending again
    details = [e.detail or "" for e in status.history]
    assert any("outcome unknown" in d for d in details)


async def test_meta_throttling_the_number_halves_its_rate_and_costs_no_attempt(
    pipeline: Pipeline, sandbox: SandboxClient, redis: Redis
) -> None:
    """The fake Meta allows 5 mps while waq thinks 80: 130429s slow the number down (the
    divisor in Redis), every message is accepted, and no throttle counts as an attempt."""
    await sandbox.set_number(PNID, mps=5)
    customers = [f"+1650557{i:04d}" for i in range(20)]
    ids = [
        (await pipeline.send(to, TEMPLATE)).message_id for to in customers
    ]  # templates: no window needed
    await pipeline.run_worker(delivery=DeliveryConfig(max_attempts=2, pause_check_s=0.01))
    stats = await sandbox.stats()
    assert stats["outcomes"].get("130429", 0) > 0, stats
    assert await RateLimiter(redis).slowdown(PNID) > 1.5
    for message_id in ids:
        status = await pipeline.status(message_id)
        assert status.state is MessageState.ACCEPTED, status
        assert status.attempts == 1  # max_attempts=2 would have dead-lettered a counted one


async def test_app_wide_throttle_slows_every_number(
    pipeline: Pipeline, sandbox: SandboxClient, redis: Redis
) -> None:
    """Code 4 (the app's call limit) slows everything down: the app-wide divisor moves."""
    healer = await refusing(sandbox, code=4, times=1)
    enqueued = await pipeline.send(CUSTOMER, TEMPLATE)
    await pipeline.run_worker()
    await healer
    assert await RateLimiter(redis).slowdown(APP_SCOPE) > 1.5
    status = await pipeline.status(enqueued.message_id)
    assert status.state is MessageState.ACCEPTED
    assert status.attempts == 1


async def test_pair_throttle_131056_backs_off_that_customer_only(
    pipeline: Pipeline, sandbox: SandboxClient, redis: Redis
) -> None:
    """131056 pushes that pair's next slot out 4^x seconds (1 s, then 4 s), and no refusal is
    an attempt; another customer is untouched meanwhile."""
    healer = await refusing(sandbox, code=131056, times=2)
    throttled = await pipeline.send(CUSTOMER, TEMPLATE)
    await pipeline.run_worker()
    await healer
    status = await pipeline.status(throttled.message_id)
    assert status.state is MessageState.ACCEPTED
    assert status.attempts == 1
    refused = [e.at for e in status.history if (e.error or {}).get("code") == 131056]
    accepted_at = next(e for e in status.history if e.state is MessageState.ACCEPTED).at
    assert len(refused) == 2
    assert refused[1] - refused[0] >= 1 * 0.9  # 4^0 s after the first refusal
    assert accepted_at - refused[1] >= 4 * 0.9  # 4^1 s after the second
    other = await pipeline.send("+16505550000", TEMPLATE)  # another customer: not held up
    started = time.monotonic()
    await pipeline.run_worker()
    assert (await pipeline.status(other.message_id)).state is MessageState.ACCEPTED
    assert time.monotonic() - started < 3.0


async def test_a_late_send_never_comes_closer_than_a_slot_to_the_last(
    pipeline: Pipeline, sandbox: SandboxClient, redis: Redis
) -> None:
    """A stalled event loop wakes past a message's slot. Right after another send (catching
    up would burst at Meta) the slot is given up: not sent, back in line free, sent by the
    next claim. With the last send a slot's spacing ago (a busy worker, spaced) it goes."""
    await pipeline.customer_writes(sandbox)
    enqueued = await pipeline.send()
    transitions = pipeline.producer.transitions
    limiter = RateLimiter(redis, RateConfig(late_tolerance_s=0.01))
    graph = GraphClient(
        access_token=SecretStr(ACCESS_TOKEN), base_url=pipeline.config.graph_base_url
    )
    delivery = Delivery(graph=graph, statuses=pipeline.producer.statuses, pauses=pipeline.pauses,
                        limiter=limiter, config=DeliveryConfig())  # fmt: skip
    limits = ClaimLimits()
    job = LaneJob(transitions=transitions, delivery=delivery, limiter=limiter, limits=limits,
                  config=DeliveryConfig(slice_s=0.01))  # fmt: skip

    async def stall() -> None:
        time.sleep(0.05)  # noqa: ASYNC251 - the point: the loop is blocked past the slot

    async def late_send(last_send_ago_s: float) -> None:
        [claimed] = (await transitions.claim(PNID, "1", limits, app_factor=1.0,
                                             may_idle=False)).messages  # fmt: skip
        run = _LaneRun(job, PNID, "1")
        run.interval_s = 0.1
        run.last_send = time.monotonic() - last_send_ago_s
        stalled = asyncio.create_task(stall())
        await run._deliver(claimed, time.monotonic() + 0.001, counted=False, wait_s=0.001)
        await stalled
        await run.drain()

    try:
        await late_send(0.0)
        assert await sandbox.ledger() == []
        status = await pipeline.status(enqueued.message_id)
        assert (status.state, status.attempts) == (MessageState.QUEUED, 0)
        assert "missed its rate slot" in (status.detail or "")
        await late_send(1.0)
        assert len(await sandbox.ledger()) == 1
        assert (await pipeline.status(enqueued.message_id)).state is MessageState.ACCEPTED
    finally:
        await graph.aclose()


async def test_window_margin_closes_the_window_early(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """A customer who wrote 23 h 59.5 min ago: with the default 60 s margin waq treats the
    window as closed and dead-letters the text without calling Meta; with no margin it goes."""
    at = time.time() - (WINDOW_S - 30)
    await sandbox.inbound(CUSTOMER, timestamp=at)  # Meta's window: still open
    await pipeline.windows.record_inbound(PNID, CUSTOMER[1:], at)
    late = await pipeline.send()
    await pipeline.run_worker()
    assert (await pipeline.status(late.message_id)).state is MessageState.DEAD
    assert await sandbox.ledger() == []
    on_time = await pipeline.send(idempotency_key="no-margin")
    await pipeline.run_worker(window_margin_s=0)
    assert (await pipeline.status(on_time.message_id)).state is MessageState.ACCEPTED


async def test_status_records_expire_after_the_retention(pipeline: Pipeline, redis: Redis) -> None:
    """A message's record and history carry the retention as their TTL (7 days by default)."""
    enqueued = await pipeline.send(CUSTOMER, TEMPLATE)
    record_ttl = await redis.ttl(keys.message(enqueued.message_id))
    history_ttl = await redis.ttl(keys.message_history(enqueued.message_id))
    assert 7 * 24 * 3600 - 60 < record_ttl <= 7 * 24 * 3600
    assert 7 * 24 * 3600 - 60 < history_ttl <= 7 * 24 * 3600
