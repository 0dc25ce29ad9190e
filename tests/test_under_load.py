"""Correctness under real load, with real `waq worker` processes as production runs them.

Each test here reproduces a bug that tests calling functions directly did not reach: a
backlog deeper than the rate limiter's horizon left unsent messages in ``sending``, and the
paused-number probe was written by arq as a pickle the worker could not read.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from producer import Producer, keys
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient, SandboxProcess
from tests.support import ACCESS_TOKEN, TEMPLATE
from worker.pauses import PauseStore
from worker.runner import WorkerConfig, create_worker

PNID = DEFAULT_PHONE_NUMBER_ID
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


@pytest.fixture
def sandbox_process() -> Iterator[str]:
    """`waq sandbox` in its own process (Meta's clock is not stalled by the test's loop)."""
    with SandboxProcess(env={"WAQ_ACCESS_TOKEN": ACCESS_TOKEN}) as process:
        yield process.url


def spawn_workers(
    count: int, redis_url: str, graph_url: str, log_dir: Path, **env: str
) -> list[subprocess.Popen[bytes]]:
    """`waq worker` processes with the default settings but for ``env``; JSON logs to files."""
    base = {
        **os.environ,
        "WAQ_REDIS_URL": redis_url,
        "WAQ_GRAPH_BASE_URL": graph_url,
        "WAQ_ACCESS_TOKEN": ACCESS_TOKEN,
        "WAQ_LOG_FORMAT": "json",
        **env,
    }
    workers = []
    for index in range(count):
        with (log_dir / f"worker-{index}.log").open("wb") as log:  # the child keeps its copy
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "waq", "worker"], env=base, stdout=log, stderr=log
                )
            )
    return workers


def stop(workers: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every worker; their exit codes."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    return [worker.wait(timeout=40) for worker in workers]


def read_logs(log_dir: Path) -> str:
    """Everything the workers logged."""
    return "".join(path.read_text() for path in sorted(log_dir.glob("worker-*.log")))


def log_events(log_dir: Path) -> Counter[str]:
    """How often each structlog event appears in the workers' JSON logs."""
    events: Counter[str] = Counter()
    for path in log_dir.glob("worker-*.log"):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                events[json.loads(line).get("event", "")] += 1
    return events


@pytest.mark.timeout(180)
async def test_a_backlog_drains_at_the_default_limit_and_nothing_unsent_is_sending(
    redis: Redis, redis_url: str, sandbox_process: str, tmp_path: Path
) -> None:
    """1,000 templates to 500 customers (12.5 s at 80 mps), two `waq worker`s with the
    default limits: the sandbox receives them at >= 0.95 x 80 mps, and no message is ever
    `sending` without reaching it, nor reconciled, nor dead-lettered as ambiguous."""
    count, customers = 1000, 500
    requests = [
        {"phone_number_id": PNID, "to": f"+1650556{i % customers:04d}", "message": TEMPLATE}
        for i in range(count)
    ]
    ids = [e.message_id for e in await Producer(redis).enqueue_many(requests)]
    workers = spawn_workers(
        2, redis_url, sandbox_process, tmp_path, WAQ_AMBIGUOUS_POLICY="dead_letter"
    )
    seen_sending: set[str] = set()
    try:
        async with SandboxClient(sandbox_process) as sandbox:
            deadline = time.monotonic() + 120
            while True:
                # Sampled while it runs: what is `sending` must be on its way to the sandbox.
                async with redis.pipeline(transaction=False) as pipe:
                    for message_id in ids:
                        pipe.hget(keys.message(message_id), "state")
                    states = await pipe.execute()
                seen_sending.update(i for i, s in zip(ids, states, strict=True) if s == b"sending")
                finals = sum(
                    s in (b"accepted", b"sent", b"delivered", b"read", b"dead") for s in states
                )
                if finals == count:
                    break
                assert time.monotonic() < deadline, Counter(states)
                assert all(w.poll() is None for w in workers), "a worker process died"
                await asyncio.sleep(0.2)
            ledger = await sandbox.ledger()
            stats = await sandbox.stats()
    finally:
        exit_codes = stop(workers)
    assert exit_codes == [0, 0]
    sent = Counter(e["biz_opaque_callback_data"] for e in ledger)
    assert sorted(sent) == sorted(ids), "every message reached Meta"
    assert max(sent.values()) == 1, "none twice"
    assert "130429" not in stats["outcomes"], stats
    assert seen_sending, "the sampler saw sends in flight"
    assert seen_sending <= set(sent)
    for message_id in ids[:: count // 50]:  # each history: one `sending`, the one that left
        history = await redis.lrange(keys.message_history(message_id), 0, -1)
        states = [json.loads(event)["state"] for event in history]
        assert states.count("sending") == 1, states
        assert states[-1] == "accepted", states
    events = log_events(tmp_path)
    assert events["send.reconciling"] == 0, events
    assert events["send.reconcile_timeout"] == 0, events
    assert await redis.zcard(keys.DEAD_LETTERS) == 0
    times = sorted(e["accepted_at"] for e in ledger)
    rate = (count - 1) / (times[-1] - times[0])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "backlog-drain.txt").write_text(
        f"{count} messages, 2 workers, default 80 mps: {rate:.1f} msg/s "
        f"({rate / 80:.3f} x 80), peak second {stats['peak_per_second'][PNID]}\n"
    )
    assert rate >= 0.95 * 80, f"drained at {rate:.1f} msg/s"


@pytest.mark.timeout(120)
async def test_the_probe_resumes_a_number_once_its_token_works(
    redis: Redis, redis_url: str, sandbox_process: str, tmp_path: Path
) -> None:
    """A real worker with a 5 s probe: Meta refuses the token (190), the number is paused and
    the message waits; the token works again, the probe's cron job resumes the number by
    itself, and the message goes, once. Every job arq writes meanwhile is JSON."""
    async with SandboxClient(sandbox_process) as sandbox:
        await sandbox.expire_token(True)
        [queued] = await Producer(redis).enqueue_many(
            [{"phone_number_id": PNID, "to": "+16505557000", "message": TEMPLATE}]
        )
        workers = spawn_workers(
            1, redis_url, sandbox_process, tmp_path,
            WAQ_HEALTH_PROBE_S="5", WAQ_PAUSE_CHECK_S="1",
        )  # fmt: skip
        raw_jobs: dict[bytes, bytes] = {}
        pauses = PauseStore(redis)

        async def until(condition: str, timeout_s: float) -> float:
            """Sample arq's raw job records until ``condition`` holds; seconds it took."""
            started = time.monotonic()
            while True:
                async for key in redis.scan_iter(match=b"arq:job:*"):
                    if (value := await redis.get(key)) is not None:
                        raw_jobs[key] = value
                pause = await pauses.get(PNID)
                if (condition == "paused") == (pause is not None):
                    return time.monotonic() - started
                assert time.monotonic() - started < timeout_s, f"not {condition}"
                assert workers[0].poll() is None, "the worker died"
                await asyncio.sleep(0.02)

        try:
            await until("paused", 30)
            pause = await pauses.get(PNID)
            assert pause is not None
            assert pause.code == 190
            status = await Producer(redis).status(queued.message_id)
            assert status is not None
            assert status.state == "queued", "waits, not dead-lettered"
            await asyncio.sleep(6)  # a probe that runs now fails: the token is still refused
            assert await pauses.get(PNID) is not None
            await sandbox.expire_token(False)
            resume_s = await until("resumed", 30)
            deadline = time.monotonic() + 20
            while (status := await Producer(redis).status(queued.message_id)) is not None and (
                status.state not in ("accepted", "sent", "delivered", "read")
            ):
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.1)
            ledger = await sandbox.ledger()
        finally:
            assert stop(workers) == [0]
    assert [e["biz_opaque_callback_data"] for e in ledger] == [queued.message_id]
    assert resume_s <= 5 + 5, f"resumed {resume_s:.1f} s after the token worked"
    assert log_events(tmp_path)["alert.number_resumed"] == 1
    logs = read_logs(tmp_path)
    assert "190" in logs  # the refusals were logged...
    assert ACCESS_TOKEN not in logs  # ...without the token they refused
    cron_jobs = [key for key in raw_jobs if b"probe_paused_numbers" in key]
    assert cron_jobs, "the sampler saw the probe's cron job queued"
    for key, value in raw_jobs.items():
        assert json.loads(value)["f"], key  # JSON, never a pickle
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "probe-resume.txt").write_text(
        f"resumed {resume_s:.1f} s after the token worked (probe every 5 s)\n"
    )


async def test_a_workers_cron_and_retry_jobs_are_written_as_json(
    redis: Redis, redis_url: str
) -> None:
    """The pool arq's cron uses to enqueue writes the job record in JSON, as producers do."""
    worker = create_worker(
        WorkerConfig(redis_url=redis_url, access_token=SecretStr("t"), health_probe_s=5)
    )
    try:
        job = await worker.pool.enqueue_job("probe_paused_numbers", _job_id="cron-check")
        assert job is not None
        raw = await redis.get(b"arq:job:cron-check")
        assert raw is not None
        assert json.loads(raw)["f"] == "probe_paused_numbers"
    finally:
        await worker.close()
