"""Meta's limits hold across worker processes, and conversations keep their order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from redis.asyncio import Redis

from producer import Producer
from sandbox import (
    DEFAULT_PHONE_NUMBER_ID,
    SandboxClient,
    SandboxConfig,
    SandboxServer,
    free_port,
)
from tests.conftest import APP_SECRET
from tests.support import ACCESS_TOKEN, run_burst_worker
from worker.limits import RateConfig
from worker.windows import WindowStore

PNID = DEFAULT_PHONE_NUMBER_ID
TEXT = {"type": "text", "text": {"body": "bubble"}}


async def open_windows(sandbox: SandboxClient, redis: Redis, numbers: list[str]) -> None:
    """Each customer writes in: Meta's window (sandbox) and waq's (as the webhook would)."""
    windows = WindowStore(redis)
    for number in numbers:
        message = (await sandbox.inbound(number))["message"]
        await windows.record_inbound(PNID, message["from"], float(message["timestamp"]))


@pytest.fixture
def sandbox_process() -> Iterator[str]:
    """`waq sandbox` in its own process, as Meta is: its clock is not stalled by ours."""
    port = free_port()
    env = {**os.environ, "WAQ_ACCESS_TOKEN": ACCESS_TOKEN, "WAQ_APP_SECRET": APP_SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "waq", "sandbox", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/_sandbox/health", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "sandbox did not start"
            time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.timeout(120)
async def test_three_worker_processes_stay_under_the_number_limit(
    redis: Redis, redis_url: str, sandbox_process: str
) -> None:
    """2,000 messages, 100 customers, 3 `waq worker` processes at 200 mps: no 130429, and no
    one-second window at the sandbox holds more than 200."""
    customers = [f"+1650555{1000 + i}" for i in range(100)]
    async with SandboxClient(sandbox_process) as sandbox:
        await sandbox.set_number(PNID, mps=200)
        await open_windows(sandbox, redis, customers)
        requests = [
            {"phone_number_id": PNID, "to": customers[i % 100], "message": TEXT}
            for i in range(2000)
        ]
        enqueued = await Producer(redis).enqueue_many(requests)
        env = {
            **os.environ,
            "WAQ_REDIS_URL": redis_url,
            "WAQ_GRAPH_BASE_URL": sandbox_process,
            "WAQ_ACCESS_TOKEN": ACCESS_TOKEN,
            "WAQ_DEFAULT_MPS": "200",
            "WAQ_LOG_LEVEL": "WARNING",
            "WAQ_LOG_FORMAT": "json",
        }
        workers = [
            subprocess.Popen(  # noqa: ASYNC220 - the processes run in the background
                [sys.executable, "-m", "waq", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(3)
        ]
        try:
            deadline = time.monotonic() + 90
            while (await sandbox.stats())["outcomes"].get("accepted", 0) < 2000:
                assert time.monotonic() < deadline, await sandbox.stats()
                assert all(w.poll() is None for w in workers), "a worker process died"
                await asyncio.sleep(0.25)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(timeout=20)
        stats = await sandbox.stats()
        ledger = await sandbox.ledger()
    assert "130429" not in stats["outcomes"], stats
    assert stats["peak_per_second"][PNID] <= 200
    assert sorted(e["biz_opaque_callback_data"] for e in ledger) == sorted(
        e.message_id for e in enqueued
    )


async def test_each_conversation_keeps_its_order_through_retries(
    redis: Redis, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """200 messages to 5 customers, 20% transient 5xx: each ledger is in enqueue order."""
    customers = [f"+1650555{2000 + i}" for i in range(5)]
    await open_windows(sandbox, redis, customers)
    await sandbox.set_faults(server_error_ratio=0.2)
    requests = [
        {"phone_number_id": PNID, "to": customers[i % 5], "message": TEXT} for i in range(200)
    ]
    enqueued = await Producer(redis).enqueue_many(requests)
    await run_burst_worker(redis_url, sandbox_server.url)
    ledger = await sandbox.ledger()
    assert len(ledger) == 200
    assert (await sandbox.stats())["outcomes"]["server_error"] > 10  # the faults really happened
    for customer in customers:
        expected = [
            e.message_id for e, r in zip(enqueued, requests, strict=True) if r["to"] == customer
        ]
        sent = [e["biz_opaque_callback_data"] for e in ledger if e["to"] == customer]
        assert sent == expected


async def test_hammered_pair_waits_alone(redis: Redis, redis_url: str) -> None:
    """15 messages to one customer past the pair limit: no 131056; another is not held up."""
    config = SandboxConfig(
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        status_delay_s=5.0,
        pair_interval_s=0.2,
        pair_burst=5,
    )
    limits = RateConfig(pair_interval_s=0.5, pair_burst=5)
    with SandboxServer(config) as server:
        async with SandboxClient(server.url) as sandbox:
            hammered, other = "+16505553000", "+16505553001"
            await open_windows(sandbox, redis, [hammered, other])
            producer = Producer(redis)
            queued = await producer.enqueue_many(
                [{"phone_number_id": PNID, "to": hammered, "message": TEXT} for _ in range(15)]
            )
            await producer.enqueue_many(
                [{"phone_number_id": PNID, "to": other, "message": TEXT} for _ in range(5)]
            )
            started = time.time()
            await run_burst_worker(redis_url, server.url, limits=limits)
            stats = await sandbox.stats()
            ledger = await sandbox.ledger()
    assert "131056" not in stats["outcomes"], stats
    accepted_at: dict[str, list[float]] = {}
    for entry in ledger:
        accepted_at.setdefault(entry["to"], []).append(entry["accepted_at"] - started)
    assert len(accepted_at[hammered]) == 15
    assert max(accepted_at[other]) < 1.0
    assert max(accepted_at[hammered]) >= (15 - 5) * 0.5
    # Each message that waited for the customer's limit says so, once, in its history.
    last = await producer.status(queued[-1].message_id)
    assert last is not None
    waits = [e for e in last.history if "rate limit of this customer" in (e.detail or "")]
    assert len(waits) == 1
