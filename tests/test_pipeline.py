"""The send pipeline end to end: producer -> Valkey -> arq worker (burst) -> sandbox over HTTP."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from producer import InvalidRequest, keys
from producer.status import FINAL_STATES, MessageState, MessageStatus
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient, SandboxServer
from tests.support import ACCESS_TOKEN, CUSTOMER, STRANGER, TEMPLATE, TEXT, Pipeline
from worker.error_table import Suggestion
from worker.graph import GraphClient
from worker.runner import probe_paused_numbers

PNID = DEFAULT_PHONE_NUMBER_ID


def states(status: MessageStatus) -> list[str]:
    return [event.state.value for event in status.history]


async def test_open_window_message_is_accepted(pipeline: Pipeline, sandbox: SandboxClient) -> None:
    """A text to a customer who wrote in reaches Meta once, tagged with waq's id; accepted."""
    await pipeline.customer_writes(sandbox)
    enqueued = await pipeline.send()
    assert enqueued.created
    assert (await pipeline.status(enqueued.message_id)).state is MessageState.QUEUED
    await pipeline.run_worker()
    status = await pipeline.status(enqueued.message_id)
    ledger = await sandbox.ledger()
    assert status.state is MessageState.ACCEPTED
    assert [e["wamid"] for e in ledger] == [status.wamid]
    assert ledger[0]["biz_opaque_callback_data"] == enqueued.message_id
    assert ledger[0]["body"]["text"] == {"body": "Your order shipped"}
    assert states(status) == ["queued", "sending", "accepted"]
    assert status.attempts == 1


async def test_closed_window_becomes_a_dead_letter_without_calling_meta(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """Free-form to a customer who never wrote: 131047 dead letter, template hint, no call."""
    enqueued = await pipeline.send(STRANGER)
    await pipeline.run_worker()
    status = await pipeline.status(enqueued.message_id)
    letter = await pipeline.dead_letters.get(enqueued.message_id)
    assert status.state is MessageState.DEAD
    assert letter is not None
    assert letter.code == 131047
    assert letter.suggestion is Suggestion.SEND_TEMPLATE
    assert "approved template" in letter.hint
    assert letter.request["message"] == TEXT
    assert await sandbox.ledger() == []
    assert (await sandbox.stats())["outcomes"] == {}


async def test_template_goes_outside_the_window(pipeline: Pipeline, sandbox: SandboxClient) -> None:
    """Templates skip the window check and are accepted."""
    enqueued = await pipeline.send(STRANGER, TEMPLATE)
    await pipeline.run_worker()
    assert (await pipeline.status(enqueued.message_id)).state is MessageState.ACCEPTED
    assert len(await sandbox.ledger()) == 1


async def test_unregistered_number_is_a_dead_letter(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """131026 from Meta is permanent: one attempt, a dead letter with fix_recipient."""
    await pipeline.customer_writes(sandbox)
    await sandbox.set_recipient("16505551234", registered=False)
    enqueued = await pipeline.send()
    await pipeline.run_worker()
    status = await pipeline.status(enqueued.message_id)
    letter = await pipeline.dead_letters.get(enqueued.message_id)
    assert status.state is MessageState.DEAD
    assert status.attempts == 1
    assert letter is not None
    assert letter.code == 131026
    assert letter.suggestion is Suggestion.FIX_RECIPIENT
    assert letter.error["http_status"] == 400
    assert letter.error["fbtrace_id"]


async def test_transient_errors_are_retried_then_accepted(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """Two 5xx answers, then success: three attempts, two of them retrying, one message sent."""
    await pipeline.customer_writes(sandbox)
    await sandbox.set_faults(server_error_next=2)
    enqueued = await pipeline.send()
    await pipeline.run_worker()
    status = await pipeline.status(enqueued.message_id)
    assert status.state is MessageState.ACCEPTED
    assert status.attempts == 3
    assert states(status).count("retrying") == 2
    assert len(await sandbox.ledger()) == 1


async def test_retries_exhausted_become_a_dead_letter(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """Always 5xx: max_attempts calls, then a dead letter holding every attempt."""
    await pipeline.customer_writes(sandbox)
    await sandbox.set_faults(server_error_ratio=1)
    enqueued = await pipeline.send()
    await pipeline.run_worker()
    status = await pipeline.status(enqueued.message_id)
    letter = await pipeline.dead_letters.get(enqueued.message_id)
    assert status.state is MessageState.DEAD
    assert status.attempts == 4
    assert (await sandbox.stats())["outcomes"]["server_error"] == 4
    assert letter is not None
    assert "gave up after 4 attempts" in letter.hint
    assert [e.state.value for e in letter.attempts].count("retrying") == 3


async def test_pause_then_resume_by_health_probe(
    pipeline: Pipeline, sandbox: SandboxClient, sandbox_server: SandboxServer
) -> None:
    """An expired token pauses the number (no dead letter); the probe resumes it; it sends."""
    await pipeline.customer_writes(sandbox)
    await sandbox.expire_token()
    enqueued = await pipeline.send()
    await pipeline.run_worker(max_burst_jobs=1)
    status = await pipeline.status(enqueued.message_id)
    pause = await pipeline.pauses.get(PNID)
    assert status.state is MessageState.QUEUED
    assert status.detail is not None
    assert "paused" in status.detail
    assert status.attempts == 0
    assert pause is not None
    assert pause.code == 190
    assert await pipeline.dead_letters.count() == 0

    async with GraphClient(
        access_token=SecretStr(ACCESS_TOKEN), base_url=sandbox_server.url
    ) as graph:
        ctx = {
            "pauses": pipeline.pauses,
            "graph": graph,
            "transitions": pipeline.producer.transitions,
        }
        assert await probe_paused_numbers(ctx) == {PNID: "still failing: meta_190"}
        await sandbox.expire_token(False)
        assert await probe_paused_numbers(ctx) == {PNID: "resumed"}
    await pipeline.run_worker()
    assert (await pipeline.status(enqueued.message_id)).state is MessageState.ACCEPTED
    assert len(await sandbox.ledger()) == 1


async def test_operator_resume(pipeline: Pipeline, sandbox: SandboxClient) -> None:
    """A number paused by hand waits; resuming it lets its messages go."""
    await pipeline.customer_writes(sandbox)
    await pipeline.pauses.pause(PNID, reason="maintenance", code=None, by="operator")
    enqueued = await pipeline.send()
    await pipeline.run_worker(max_burst_jobs=1)
    assert (await pipeline.status(enqueued.message_id)).state is MessageState.QUEUED
    assert await sandbox.ledger() == []
    assert await pipeline.pauses.resume(PNID)
    await pipeline.run_worker()
    assert (await pipeline.status(enqueued.message_id)).state is MessageState.ACCEPTED


async def test_idempotent_repeat_enqueues_nothing(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """The same idempotency key returns the first message's id and sends once."""
    await pipeline.customer_writes(sandbox)
    first = await pipeline.send(idempotency_key="order-42")
    again = await pipeline.send(idempotency_key="order-42")
    assert again.message_id == first.message_id
    assert (first.created, again.created) == (True, False)
    await pipeline.run_worker()
    after = await pipeline.send(idempotency_key="order-42")
    assert (after.created, after.state) == (False, MessageState.ACCEPTED)
    await pipeline.run_worker()
    assert len(await sandbox.ledger()) == 1


async def test_bulk_enqueue_and_every_message_ends_final(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """Bulk enqueue, mixed outcomes: each message ends in one final state; the ledger agrees."""
    customers = [f"+1650555{1000 + i}" for i in range(12)]
    for number in customers[:8]:
        await pipeline.customer_writes(sandbox, number)
    await sandbox.set_faults(server_error_ratio=0.3)
    requests = [{"phone_number_id": PNID, "to": n, "message": TEXT} for n in customers]
    enqueued = await pipeline.producer.enqueue_many(requests)
    assert len({e.message_id for e in enqueued}) == 12
    await pipeline.run_worker()
    statuses = [await pipeline.status(e.message_id) for e in enqueued]
    assert all(s.state in FINAL_STATES for s in statuses)
    accepted = {s.id for s in statuses if s.state is MessageState.ACCEPTED}
    dead = {s.id for s in statuses if s.state is MessageState.DEAD}
    ledger = await sandbox.ledger()
    assert {e["biz_opaque_callback_data"] for e in ledger} == accepted
    assert len(ledger) == len(accepted)
    assert await pipeline.dead_letters.count() == len(dead)
    assert {s.to for s in statuses if s.id in dead} >= set(customers[8:])


async def test_invalid_request_is_refused_and_nothing_is_queued(
    pipeline: Pipeline, redis: Redis
) -> None:
    """A bad item names its index and field; the batch enqueues nothing."""
    good = {"phone_number_id": PNID, "to": CUSTOMER, "message": TEXT}
    bad = {
        "phone_number_id": PNID,
        "to": CUSTOMER,
        "message": {"type": "text", "text": {"body": ""}},
    }
    with pytest.raises(InvalidRequest) as info:
        await pipeline.producer.enqueue_many([good, bad])
    assert [e.field for e in info.value.errors] == ["[1].message.text.body"]
    assert await redis.zcard("waq:queue") == 0
    assert await redis.zcard(keys.lane(PNID)) == 0


async def test_rerun_of_an_accepted_message_does_not_resend(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """A message back in its lane after it was accepted (a replayed step) is not sent again."""
    await pipeline.customer_writes(sandbox)
    enqueued = await pipeline.send()
    await pipeline.run_worker()
    await pipeline.redis.zadd(keys.lane(PNID), {enqueued.message_id: 1})
    assert await pipeline.producer.transitions.wake(PNID) is not None
    await pipeline.run_worker()
    assert len(await sandbox.ledger()) == 1
    assert await pipeline.redis.zcard(keys.lane(PNID)) == 0
    assert (await pipeline.status(enqueued.message_id)).state is MessageState.ACCEPTED


async def test_a_long_pause_keeps_the_messages_queued_and_costs_no_attempt(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """A paused number's lane job comes back later; its messages wait queued, untouched."""
    await pipeline.customer_writes(sandbox)
    await pipeline.pauses.pause(PNID, reason="weekend", code=None, by="operator")
    enqueued = await pipeline.send()
    await pipeline.run_worker(max_burst_jobs=3)
    status = await pipeline.status(enqueued.message_id)
    assert status.state is MessageState.QUEUED
    assert status.attempts == 0
    assert await pipeline.dead_letters.count() == 0
    assert await sandbox.ledger() == []
    await pipeline.pauses.resume(PNID)
    await pipeline.producer.transitions.wake(PNID)
    await pipeline.run_worker()
    assert (await pipeline.status(enqueued.message_id)).state is MessageState.ACCEPTED


async def test_a_message_that_no_longer_validates_is_dead_lettered_and_the_lane_goes_on(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """A corrupt record (or a garbage window key) stops one message, never its lane."""
    await pipeline.customer_writes(sandbox)
    await pipeline.customer_writes(sandbox, STRANGER)
    bad = await pipeline.send()
    good = await pipeline.send(STRANGER)
    await pipeline.redis.hset(keys.message(bad.message_id), "request", '{"to": 1}')
    await pipeline.redis.set(keys.window(PNID, STRANGER.lstrip("+")), "not a time")
    third = await pipeline.send(STRANGER, TEMPLATE)
    await pipeline.run_worker()
    letter = await pipeline.dead_letters.get(bad.message_id)
    assert letter is not None
    assert letter.code == "invalid_job"
    # The garbage window reads as closed: the free-form message is refused, the template goes.
    closed = await pipeline.dead_letters.get(good.message_id)
    assert closed is not None
    assert closed.code == 131047
    assert (await pipeline.status(third.message_id)).state is MessageState.ACCEPTED
    assert len(await sandbox.ledger()) == 1


async def test_sends_survive_a_flushed_script_cache(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """After Redis loses its scripts (a restart), the pipelined checks load them and go on."""
    await pipeline.customer_writes(sandbox)
    first = await pipeline.send()
    second = await pipeline.send()
    await pipeline.redis.script_flush()
    await pipeline.run_worker()
    assert (await pipeline.status(first.message_id)).state is MessageState.ACCEPTED
    assert (await pipeline.status(second.message_id)).state is MessageState.ACCEPTED
    assert len(await sandbox.ledger()) == 2
