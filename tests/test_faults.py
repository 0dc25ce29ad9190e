"""Fault injection against the real processes: nothing lost, nothing sent twice.

Each scenario runs Valkey (AOF on), the sandbox, the gateway and three `waq worker`
processes, breaks something during a run, and counts every message against the sandbox's
ledger: delivered exactly once, or dead-lettered with a reason. Figures go to
test-artifacts/reliability.md (docs/reliability.md records a run).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import SandboxClient
from tests.fault_cluster import FINAL, Cluster, Report, kill

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh deployment of real processes."""
    running = Cluster()
    running.start()
    try:
        yield running
    finally:
        running.stop()


def record(report: Report) -> None:
    """Keep the figures, and hold them to the promise."""
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "reliability.md").open("a") as table:
        table.write(report.row() + "\n")
    print(report.row())  # shown with -s
    assert report.delivered_twice == 0, report
    assert report.never_delivered == 0, report
    assert report.delivered_once + sum(report.dead_lettered.values()) == report.enqueued, report


async def test_worker_sigkilled_six_times(cluster: Cluster) -> None:
    """Six SIGKILLs of random workers during a 1,000-message run; each is replaced."""
    customers = await cluster.customers_write_in(100)
    ids = await cluster.enqueue(customers, 1000)
    started = time.monotonic()
    rng = random.Random(3)
    watchers: list[asyncio.Task[float]] = []

    async def recovered(killed_at: float, in_flight: list[str]) -> float:
        """Seconds from a kill until every message then in flight is final."""
        # Polls another process's state in Redis: there is no event to wait on.
        while not all(s in FINAL for s in (await cluster.states(in_flight)).values()):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        return time.monotonic() - killed_at

    for _ in range(6):
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        victim = cluster.workers.pop(rng.randrange(len(cluster.workers)))
        kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        in_flight = sorted(i for i, s in (await cluster.states(ids)).items() if s == "sending")
        if in_flight:
            watchers.append(asyncio.create_task(recovered(killed_at, in_flight)))
        cluster.start_worker()
    drained = await cluster.drain(ids, timeout_s=200)
    recovery = await asyncio.gather(*watchers)
    report = await cluster.report(
        "6 x SIGKILL a worker, 1,000 msgs", ids, time.monotonic() - started
    )
    report.notes["kill-to-final of in-flight, max s"] = (
        f"{max(recovery, default=0):.1f} (drained {drained:.1f})"
    )
    record(report)


async def test_every_worker_sigtermed_then_replaced(cluster: Cluster) -> None:
    """SIGTERM to every worker mid-run (in-flight sends finish), then new workers."""
    customers = await cluster.customers_write_in(50)
    ids = await cluster.enqueue(customers, 600)
    started = time.monotonic()
    await asyncio.sleep(2)
    for worker in cluster.workers:
        worker.send_signal(signal.SIGTERM)
    for worker in cluster.workers:
        worker.wait(timeout=60)
    cluster.workers.clear()
    for _ in range(3):
        cluster.start_worker()
    await cluster.drain(ids, timeout_s=120)
    record(await cluster.report("SIGTERM all workers, new ones", ids, time.monotonic() - started))


async def test_redis_sigkilled_and_restarted(cluster: Cluster) -> None:
    """Valkey SIGKILLed mid-run and restarted from its AOF; workers and gateway reconnect."""
    customers = await cluster.customers_write_in(50)
    ids = await cluster.enqueue(customers, 600)
    started = time.monotonic()
    await asyncio.sleep(2)
    cluster.kill_redis()
    await asyncio.sleep(1)
    cluster.start_redis()
    await cluster.drain(ids, timeout_s=150)
    report = await cluster.report("Redis SIGKILL + restart (AOF)", ids, time.monotonic() - started)
    report.notes["workers alive after"] = sum(w.poll() is None for w in cluster.workers)
    record(report)


async def test_answers_dropped_after_acceptance(cluster: Cluster) -> None:
    """5% of sends are processed by the sandbox and then the connection drops unanswered."""
    customers = await cluster.customers_write_in(50)
    async with SandboxClient(cluster.sandbox_url) as sandbox:
        await sandbox.set_faults(drop_ratio=0.05)
        ids = await cluster.enqueue(customers, 400)
        started = time.monotonic()
        await cluster.drain(ids, timeout_s=150)
        dropped = (await sandbox.stats())["outcomes"].get("dropped", 0)
    report = await cluster.report(
        "5% answers dropped after acceptance", ids, time.monotonic() - started
    )
    report.notes["dropped answers"] = dropped
    assert dropped > 10
    record(report)


async def test_webhooks_delivered_twice(cluster: Cluster) -> None:
    """Every webhook arrives twice (Meta's at-least-once); statuses and windows stay right."""
    async with SandboxClient(cluster.sandbox_url) as sandbox:
        await sandbox.set_faults(duplicate_webhook_ratio=1.0)
        customers = await cluster.customers_write_in(50)
        ids = await cluster.enqueue(customers, 400)
        started = time.monotonic()
        await cluster.drain(ids, timeout_s=120)
    record(await cluster.report("every webhook delivered twice", ids, time.monotonic() - started))
