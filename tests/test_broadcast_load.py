"""A 10,000-recipient broadcast at Meta's default 80 mps while one-to-one messages keep coming:
two real `waq worker` processes and the sandbox in its own process, as in production."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from producer import Producer
from producer.broadcasts import Broadcasts, BroadcastSpec, Recipient
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient
from tests.support import TEMPLATE
from tests.test_under_load import ARTIFACTS, read_logs, sandbox_process, spawn_workers, stop

__all__ = ["sandbox_process"]  # the fixture, used by name

PNID = DEFAULT_PHONE_NUMBER_ID
RECIPIENTS = 10_000
ONE_TO_ONE_PER_S = 10
# The limiter books this share of Meta's 80 mps below it. At the default 3 % this test once
# drew one 130429 under CI's load (coverage, two workers, the sandbox and this loop on two
# cores), and the slowdown that follows a throttle, not the share, then set the broadcast's
# rate. This test measures the share and the priority; the limiter's own margin is held to
# 0 x 130429 by tests/test_under_load.py at the default. See docs/campaigns.md.
SAFETY = 0.05


@pytest.mark.timeout(420)
async def test_a_broadcast_keeps_its_share_and_one_to_one_messages_stay_fast(
    redis: Redis, redis_url: str, sandbox_process: str, tmp_path: Path
) -> None:
    """10,000 recipients with their own parameter, and 10 one-to-one messages a second: the
    one-to-one messages' enqueue-to-accepted p99 stays under 2 s, the broadcast goes at
    >= 0.95 of what they leave of the number's limit, and its funnel matches the ledger."""
    producer = Producer(redis)
    spec = BroadcastSpec(
        phone_number_id=PNID, template="waq_followup",
        recipients=[Recipient(to=f"+1651{i:07d}", parameters=[f"c{i}"]) for i in range(RECIPIENTS)],
    )  # fmt: skip
    created = time.monotonic()
    broadcast, _ = await Broadcasts(producer).create(spec)
    create_s = time.monotonic() - created
    workers = spawn_workers(2, redis_url, sandbox_process, tmp_path, WAQ_RATE_SAFETY=str(SAFETY))
    enqueued_at: dict[str, float] = {}
    try:
        n = 0
        deadline = time.monotonic() + 360
        while True:
            progress = await Broadcasts(producer).get(broadcast.id)
            assert progress is not None
            if progress.finished:
                break
            assert time.monotonic() < deadline, (progress.funnel, read_logs(tmp_path)[-3000:])
            assert all(w.poll() is None for w in workers), "a worker process died"
            queued = await producer.enqueue(
                {"phone_number_id": PNID, "to": f"+1652{n % 300:07d}", "message": TEMPLATE}
            )
            enqueued_at[queued.message_id] = time.time()
            n += 1
            await asyncio.sleep(1 / ONE_TO_ONE_PER_S)
        async with SandboxClient(sandbox_process) as sandbox:
            for _ in range(50):  # the last one-to-one messages
                ledger = await sandbox.ledger()
                sent = {e["biz_opaque_callback_data"] for e in ledger}
                if all(m in sent for m in enqueued_at):
                    break
                await asyncio.sleep(0.2)
            stats = await sandbox.stats()
    finally:
        assert stop(workers) == [0, 0]
    at = {e["biz_opaque_callback_data"]: e["accepted_at"] for e in ledger}
    one_to_one = [at[m] - t for m, t in enqueued_at.items()]
    p99 = statistics.quantiles(one_to_one, n=100)[98]
    bulk_times = sorted(t for m, t in at.items() if m not in enqueued_at)
    span = bulk_times[-1] - bulk_times[0]
    bulk_rate = (len(bulk_times) - 1) / span
    others = [t for m, t in at.items() if m in enqueued_at and bulk_times[0] <= t <= bulk_times[-1]]
    left_for_bulk = 80 * (1 - SAFETY) - len(others) / span  # what the limiter books
    final = await Broadcasts(producer).get(broadcast.id)
    assert final is not None
    ARTIFACTS.mkdir(exist_ok=True)
    report = (
        f"broadcast of {RECIPIENTS} at 80 mps, 2 workers, {len(enqueued_at)} one-to-one "
        f"messages at {ONE_TO_ONE_PER_S}/s: created in {create_s:.1f} s; broadcast "
        f"{bulk_rate:.1f} msg/s over {span:.0f} s = {bulk_rate / left_for_bulk:.3f} of the "
        f"{left_for_bulk:.1f} msg/s one-to-one left it; one-to-one enqueue-to-accepted p50 "
        f"{statistics.median(one_to_one):.2f} s, p99 {p99:.2f} s, max {max(one_to_one):.2f} s; "
        f"funnel {final.funnel}; peak second {stats['peak_per_second'][PNID]}\n"
    )
    (ARTIFACTS / "broadcast-load.txt").write_text(report)
    print(report)
    assert len(bulk_times) == RECIPIENTS
    assert final.funnel["queued"] == RECIPIENTS
    assert final.funnel["sent"] == len(bulk_times)
    assert final.funnel["dead"] == final.funnel["cancelled"] == 0
    assert "130429" not in stats["outcomes"], stats
    assert p99 < 2.0, report
    assert bulk_rate >= 0.95 * left_for_bulk, report
