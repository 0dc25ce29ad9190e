"""One worker process of the benchmark: drain a pre-filled queue in burst mode, report figures.

    python -m bench.drain KIND --redis-url URL [--sandbox-url URL] [--transport httpx|aiohttp]

KIND is ``noop`` (plain arq, a job that does nothing), ``httpx`` (plain arq, one bare httpx
POST of a text message to the sandbox per job) or ``waq`` (waq's worker with every feature
on). The clock starts in the worker's startup hook, after imports and connections, and stops
when the burst worker has drained the queue; CPU is this process's user + system time over
the same span. Prints one JSON line: ``{"kind", "started", "ended", "seconds", "cpu_s"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Callable
from typing import Any

import httpx
from arq.connections import RedisSettings
from arq.worker import Worker, func
from pydantic import SecretStr

from producer.client import json_serializer
from sandbox import DEFAULT_PHONE_NUMBER_ID
from waq.heap import freeze_startup_heap
from waq.settings import Settings
from worker.delivery import DeliveryConfig
from worker.graph import DEFAULT_GRAPH_API_VERSION
from worker.limits import RateConfig
from worker.logs import configure_logging
from worker.runner import WorkerConfig, create_worker

QUEUE = "bench:queue"
TOKEN = "bench-token"  # noqa: S105 - the local sandbox's
BODY = {"messaging_product": "whatsapp", "type": "text", "text": {"body": "benchmark"}}


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def noop(ctx: dict[str, Any], **kwargs: Any) -> None:
    """The cheapest job arq can run."""


async def post(ctx: dict[str, Any], *, to: str) -> int:
    """One bare POST of a text message, the way a hand-rolled task would send it."""
    client: httpx.AsyncClient = ctx["client"]
    response = await client.post(
        f"/{DEFAULT_GRAPH_API_VERSION}/{DEFAULT_PHONE_NUMBER_ID}/messages", json={**BODY, "to": to}
    )
    return response.status_code


def plain_arq(kind: str, redis_url: str, sandbox_url: str, clock: dict[str, float]) -> Worker:
    """A plain arq worker: JSON jobs like waq's, default settings otherwise."""

    async def startup(ctx: dict[str, Any]) -> None:
        if kind == "httpx":
            ctx["client"] = httpx.AsyncClient(
                base_url=sandbox_url, headers={"Authorization": f"Bearer {TOKEN}"}
            )
        clock["started"], clock["cpu"] = time.time(), cpu_s()

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "client" in ctx:
            await ctx["client"].aclose()

    return Worker(
        functions=[func(noop if kind == "noop" else post, name="job")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=QUEUE,
        burst=True,
        poll_delay=0.05,
        max_jobs=50,
        keep_result=0,
        job_serializer=json_serializer,
        job_deserializer=json.loads,
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=False,
    )


def waq_worker(redis_url: str, sandbox_url: str, transport: str, clock: dict[str, float]) -> Worker:
    """waq's own worker (window, pause, order, both rate limits, status records: all on)."""
    config = WorkerConfig(
        redis_url=redis_url,
        access_token=SecretStr(TOKEN),
        graph_base_url=sandbox_url,
        queue_name=QUEUE,
        burst=True,
        health_probe_s=None,
        http_client=transport,  # type: ignore[arg-type]  # argparse checked the choice
        # httpx's own pool scans every connection for each request (py-spy: 57% of the CPU
        # at 50 connections); docs/configuration.md says to keep it near 20 with httpx.
        concurrency=20 if transport == "httpx" else 200,
        delivery=DeliveryConfig(backoff_base_s=0.05, backoff_cap_s=0.5),
        limits=RateConfig(default_mps=100_000),
    )
    worker = create_worker(config)
    startup = worker.on_startup

    async def timed_startup(ctx: dict[str, Any]) -> None:
        if startup is not None:
            await startup(ctx)
        clock["started"], clock["cpu"] = time.time(), cpu_s()

    worker.on_startup = timed_startup
    return worker


def main() -> None:
    """Run one burst worker and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["noop", "httpx", "waq"])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--sandbox-url", default="")
    parser.add_argument("--transport", choices=["httpx", "aiohttp"], default="httpx")
    args = parser.parse_args()
    # The log settings the harness asks for (WAQ_LOG_LEVEL, WAQ_LOG_FORMAT), to stderr, as
    # `waq worker` applies them: unconfigured, structlog prints a console line per message
    # to stdout, which is the pipe the harness reads the figures from.
    settings = Settings()
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    clock: dict[str, float] = {}

    def build() -> Worker:
        if args.kind == "waq":
            return waq_worker(args.redis_url, args.sandbox_url, args.transport, clock)
        return plain_arq(args.kind, args.redis_url, args.sandbox_url, clock)

    if args.kind == "waq":
        freeze_startup_heap()  # as `waq worker` does
    asyncio.run(_run(build))
    ended, cpu_end = time.time(), cpu_s()
    print(
        json.dumps(
            {
                "kind": args.kind,
                "started": clock["started"],
                "ended": ended,
                "seconds": ended - clock["started"],
                "cpu_s": cpu_end - clock["cpu"],
            }
        ),
        flush=True,
    )


async def _run(build: Callable[[], Worker]) -> None:
    worker = build()  # inside the loop: arq's Worker binds the running loop when built
    try:
        await worker.main()
    finally:
        await worker.close()


if __name__ == "__main__":
    main()
