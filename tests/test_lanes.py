"""Sender lanes: only conversation heads are due, every lane keeps a job while it has
messages, going idle and a new message hand off atomically, and lanes share workers.

The steps are read back from Redis as they really are (lane zsets, the lane-job hash, arq's
job records); the sweep and the time slice are tested by real workers running them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from typer.testing import CliRunner

from producer import LANE_FUNCTION, ClaimLimits, Producer, keys
from producer.recipient import wa_id_of
from producer.request import SendRequest
from producer.status import MessageState
from producer.status_store import StatusStore
from producer.transitions import EnqueueItem, Outcome, Transitions, lane_job_id
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient, SandboxServer
from tests.support import ACCESS_TOKEN, CUSTOMER, STRANGER, TEMPLATE, Pipeline
from tests.test_under_load import read_logs, spawn_workers, stop
from waq.cli import app
from worker.delivery import DeliveryConfig
from worker.limits import RateConfig
from worker.overview import read_overview
from worker.pauses import PauseStore
from worker.runner import WorkerConfig, create_worker

PNID = DEFAULT_PHONE_NUMBER_ID
OTHER = "106540352242999"
LIMITS = ClaimLimits(window_s=1e12)  # every window open: these tests are about the lane


def request(to: str = CUSTOMER, pnid: str = PNID) -> dict[str, object]:
    return {"phone_number_id": pnid, "to": to, "message": TEMPLATE}


async def lane_jobs(redis: Redis) -> list[str]:
    return sorted(j.decode() for j in await redis.zrange(keys.DEFAULT_QUEUE, 0, -1))


async def test_only_each_conversations_head_is_due(redis: Redis) -> None:
    """Three messages to one customer and one to another: two heads in the lane, four pending."""
    producer = Producer(redis)
    first, *later = await producer.enqueue_many([request(), request(), request()])
    other = await producer.enqueue(request(STRANGER))
    lane = {m.decode() for m in await redis.zrange(keys.lane(PNID), 0, -1)}
    assert lane == {first.message_id, other.message_id}
    order = await redis.lrange(keys.order(PNID, wa_id_of(CUSTOMER)), 0, -1)
    assert [m.decode() for m in order] == [first.message_id, *(m.message_id for m in later)]
    assert await redis.hget(keys.lane_job(PNID), "pending") == b"4"


async def test_a_message_to_an_idle_lane_starts_one_json_job(redis: Redis) -> None:
    """The first message starts the lane's job (JSON, as arq reads it); the rest start none."""
    producer = Producer(redis)
    await producer.enqueue(request())
    await producer.enqueue_many([request(STRANGER), request()])
    assert await lane_jobs(redis) == [lane_job_id(PNID, "1")]
    raw = await redis.get(keys.ARQ_JOB_PREFIX + lane_job_id(PNID, "1"))
    job = json.loads(raw)
    assert job["f"] == LANE_FUNCTION
    assert job["k"] == {"phone_number_id": PNID, "token": "1"}
    assert await redis.hget(keys.lane_job(PNID), "token") == b"1"


async def test_going_idle_and_a_new_message_hand_off_atomically(redis: Redis) -> None:
    """A claim that finds the lane empty gives the token up in the same step; the next message
    then starts a new job. A claim while a batch is in flight never goes idle."""
    transitions = Transitions(redis, retention_s=3600)
    producer = Producer(redis)
    sent = await producer.enqueue(request())
    claim = await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=True)
    assert [(m.kind, m.message_id) for m in claim.messages] == [("send", sent.message_id)]
    # In flight: the lane is not empty (the message is there, at its claim deadline).
    assert (await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=True)).kind == (
        "sleep"
    )
    outcome = Outcome.accepted(
        sent.message_id, wa_id_of(CUSTOMER), attempt=1, wamid="wamid.1", sent_at=time.time()
    )
    await transitions.settle(PNID, [outcome], LIMITS)
    waiting = await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=False)
    assert (waiting.kind, waiting.wait_s) == ("wait", None)
    assert await redis.hget(keys.lane_job(PNID), "token") == b"1"
    assert (await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=True)).kind == (
        "idle"
    )
    assert await redis.hmget(keys.lane_job(PNID), ["token", "until", "pending"]) == [
        None,
        None,
        b"0",
    ]
    await producer.enqueue(request(STRANGER))
    assert await redis.hget(keys.lane_job(PNID), "token") == b"2"
    assert lane_job_id(PNID, "2") in await lane_jobs(redis)


async def test_a_sleeping_lane_is_woken_by_a_message_due_sooner(redis: Redis) -> None:
    """A job asleep until a retry's due time is replaced when a message due now arrives; the
    replaced job finds its token stale and claims nothing."""
    transitions = Transitions(redis, retention_s=3600)
    producer = Producer(redis)
    first = await producer.enqueue(request())
    await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=True)
    retry = Outcome.retry(
        first.message_id, wa_id_of(CUSTOMER), state=MessageState.RETRYING, attempt=1, due_s=60
    )
    await transitions.settle(PNID, [retry], LIMITS)
    sleep = await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=True)
    assert sleep.kind == "sleep"
    assert sleep.wait_s == pytest.approx(60, abs=1)
    assert await redis.hget(keys.lane_job(PNID), "until") is not None
    await producer.enqueue(request(STRANGER))
    assert await redis.hmget(keys.lane_job(PNID), ["token", "until"]) == [b"2", None]
    assert (await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=True)).kind == (
        "stale"
    )
    woken = await transitions.claim(PNID, "2", LIMITS, app_factor=1.0, may_idle=True)
    assert [m.message_id for m in woken.messages] != [first.message_id]
    assert len(woken.messages) == 1


async def test_the_sweep_starts_a_lane_whose_job_never_started(
    redis: Redis, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A producer that died between its enqueue step and starting the lane's job left a lane
    with a token and no job; a real `waq worker`'s sweep (every second here) starts one."""
    transitions = Transitions(redis, retention_s=3600)
    valid = SendRequest.model_validate(request())
    payload = valid.model_dump(mode="json", exclude_none=True)
    fields, event = StatusStore(redis, retention_s=3600).new_record(valid, payload)
    [answer] = await transitions.enqueue_many(  # the producer's step, and no job started
        [EnqueueItem("m_orphan", PNID, valid.wa_id, "f", event, fields)]
    )
    assert transitions.parse_enqueue(answer) == (None, "1")  # ... and nobody started job 1
    assert await lane_jobs(redis) == []
    workers = spawn_workers(1, redis_url, sandbox_server.url, tmp_path, WAQ_LANE_SWEEP_S="1")
    try:
        deadline = time.monotonic() + 20
        while len(await sandbox.ledger()) < 1:
            assert time.monotonic() < deadline, read_logs(tmp_path)
            await asyncio.sleep(0.1)
    finally:
        assert stop(workers) == [0]
    assert [e["biz_opaque_callback_data"] for e in await sandbox.ledger()] == ["m_orphan"]
    assert "lane.swept" in read_logs(tmp_path)
    assert await redis.hget(keys.message("m_orphan"), "state") == b"accepted"


async def test_lanes_share_one_worker_by_time_slices(
    redis: Redis, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """One worker that runs one lane job at a time, two senders with backlogs longer than a
    slice: the second sender's messages go out before the first's backlog is done."""
    producer = Producer(redis)
    customers = [f"+1650555{2000 + i}" for i in range(30)]
    await producer.enqueue_many([request(c, PNID) for c in customers])
    await producer.enqueue_many([request(c, OTHER) for c in customers])
    await sandbox.set_number(OTHER, create=True, mps=1000)
    config = WorkerConfig(
        redis_url=redis_url,
        access_token=SecretStr(ACCESS_TOKEN),
        graph_base_url=sandbox_server.url,
        burst=True,
        poll_delay_s=0,
        health_probe_s=None,
        lane_sweep_s=None,
        concurrency=1,  # one lane job (and one Graph call) at a time
        delivery=DeliveryConfig(slice_s=0.3),
        limits=RateConfig(default_mps=20),  # 30 messages: 1.5 s a sender, five slices
    )
    worker = create_worker(config)
    try:
        await worker.main()
    finally:
        await worker.close()
    ledger = await sandbox.ledger()
    senders = [entry["phone_number_id"] for entry in ledger]
    assert sorted(senders) == sorted([PNID] * 30 + [OTHER] * 30)
    switches = sum(1 for a, b in itertools.pairwise(senders) if a != b)
    assert switches >= 3, senders


async def test_a_missed_slot_goes_back_in_line_and_gives_its_pair_slot_back(
    redis: Redis,
) -> None:
    """A message claimed but never sent (the worker woke too late for its slot) is queued
    again with its attempt not counted, no `sending` in its history, and the customer's pair
    slot returned: a worker too busy to keep its slots must not use up a customer's burst."""
    transitions = Transitions(redis, retention_s=3600)
    sent = await Producer(redis).enqueue(request())
    pair = keys.pair_rate(PNID, wa_id_of(CUSTOMER))
    assert await redis.get(pair) is None
    claim = await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=True)
    [claimed] = claim.messages
    booked = float(await redis.get(pair) or 0)
    assert booked > time.time()
    missed = Outcome.retry(
        sent.message_id, wa_id_of(CUSTOMER), state=MessageState.QUEUED, attempt=claimed.attempt,
        attempts=claimed.attempt - 1, due_s=0.0, detail="missed", unsent=True,
    )  # fmt: skip
    await transitions.settle(PNID, [missed], LIMITS)
    assert float(await redis.get(pair) or 0) == pytest.approx(booked - LIMITS.pair_interval_s)
    status = await StatusStore(redis, retention_s=3600).get(sent.message_id)
    assert status is not None
    assert (status.state, status.attempts) == (MessageState.QUEUED, 0)
    assert [e.state for e in status.history] == [MessageState.QUEUED, MessageState.QUEUED]
    again = await transitions.claim(PNID, "1", LIMITS, app_factor=1.0, may_idle=True)
    assert [(m.message_id, m.attempt) for m in again.messages] == [(sent.message_id, 1)]


async def test_waq_resume_starts_the_paused_lane_now(
    redis: Redis, redis_url: str, sandbox: SandboxClient, running_worker: None
) -> None:
    """A paused number's lane job waits out the pause check (30 s by default); `waq resume`
    starts a new one at once, and the old one, when it wakes, finds its token stale."""
    await PauseStore(redis).pause(PNID, reason="maintenance", code=None, by="operator")
    sent = await Producer(redis).enqueue(request())
    deadline = time.monotonic() + 5
    while await redis.hget(keys.lane_job(PNID), "token") != b"1" or await lane_jobs(redis) != [
        lane_job_id(PNID, "1")
    ]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the job ran, found the number paused, and was deferred
    assert await sandbox.ledger() == []
    result = await asyncio.to_thread(
        lambda: CliRunner().invoke(app, ["resume", PNID], env={"WAQ_REDIS_URL": redis_url})
    )
    assert result.exit_code == 0, result.output
    assert await redis.hget(keys.lane_job(PNID), "token") == b"2"
    deadline = time.monotonic() + 5
    while (await StatusStore(redis, retention_s=3600).get(sent.message_id)).state is not (  # type: ignore[union-attr]
        MessageState.ACCEPTED
    ):
        assert time.monotonic() < deadline, "not sent within 5 s of the resume"
        await asyncio.sleep(0.05)
    assert len(await sandbox.ledger()) == 1


async def test_each_message_to_an_idle_lane_goes_promptly(
    redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """One message at a time to a lane that goes idle in between: each is accepted within a
    second (a lost wake-up between a settle and the claim before it once held some for the
    20 s claim deadline)."""
    producer = Producer(redis)
    slowest = 0.0
    for i in range(30):
        started = time.monotonic()
        sent = await producer.enqueue(request(f"+1650555{4000 + i}"))
        while await redis.hget(keys.message(sent.message_id), "state") != b"accepted":
            assert time.monotonic() - started < 5, f"message {i} not accepted in 5 s"
            await asyncio.sleep(0.005)
        slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(0.02 if i % 2 else 0.2)
    assert slowest < 1.0
    assert len(await sandbox.ledger()) == 30


async def test_the_overview_counts_running_lane_jobs_not_cron_leases(redis: Redis) -> None:
    """arq keeps a cron run's lease after it ends; `waq status` counts lane jobs only."""
    await Producer(redis).enqueue(request())
    await redis.set("arq:in-progress:" + lane_job_id(PNID, "1"), b"1")
    await redis.set("arq:in-progress:cron:sweep_lanes:1796005310123", b"1")
    overview = await read_overview(redis)
    assert overview.in_flight == 1
    assert (overview.queue_depth, overview.queue_due, overview.lane_jobs) == (1, 1, 1)


async def test_a_replaced_job_and_its_successor_in_one_worker_send_once(
    pipeline: Pipeline, sandbox: SandboxClient, redis: Redis
) -> None:
    """Two jobs for one lane in the queue (the first replaced, as a resume does) run side by
    side in a real worker: the message goes once, and both end leaving the lane idle with no
    job, token or pending count behind (the claim that finds a stale token changes nothing:
    test_a_sleeping_lane_is_woken_by_a_message_due_sooner)."""
    sent = await pipeline.producer.enqueue(request())
    assert await pipeline.producer.transitions.wake(PNID, replace=True) == "2"
    assert await lane_jobs(redis) == [lane_job_id(PNID, "1"), lane_job_id(PNID, "2")]
    await pipeline.run_worker()
    assert [e["biz_opaque_callback_data"] for e in await sandbox.ledger()] == [sent.message_id]
    assert await redis.hmget(keys.lane_job(PNID), ["token", "until", "pending"]) == [
        None,
        None,
        b"0",
    ]
    assert await redis.zcard(keys.lane(PNID)) == 0
    assert await lane_jobs(redis) == []
