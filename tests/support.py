"""Test helpers that are real servers and workers, not mocks."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from producer import keys
from producer.client import Enqueued, Producer
from producer.events import Event
from producer.status import MessageStatus
from producer.status_store import StatusStore
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient
from sandbox.server import BackgroundServer
from worker.dead_letters import DeadLetterStore
from worker.delivery import DeliveryConfig
from worker.limits import RateConfig
from worker.pauses import PauseStore
from worker.runner import WorkerConfig, create_worker
from worker.windows import WindowStore

ACCESS_TOKEN = "test-token"  # the test sandbox's


@dataclass
class Received:
    """One POST the sink got."""

    body: bytes
    headers: dict[str, str]

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookSink:
    """Records every webhook posted to it; answers 200 like a healthy receiver."""

    received: list[Received] = field(default_factory=list)

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            self.received.append(Received(await request.body(), dict(request.headers)))
            return Response("ok")

        return Starlette(routes=[Route("/hook", receive, methods=["POST"])])

    def statuses(self) -> list[dict[str, Any]]:
        """Every status item, in arrival order."""
        return [
            status
            for r in self.received
            for entry in r.payload["entry"]
            for change in entry["changes"]
            for status in change["value"].get("statuses", [])
        ]


class WebhookSinkServer(BackgroundServer):
    """A WebhookSink over real HTTP."""

    def __init__(self) -> None:
        self.sink = WebhookSink()
        super().__init__(self.sink.app())

    @property
    def hook_url(self) -> str:
        return f"{self.url}/hook"


async def run_burst_worker(
    redis_url: str,
    sandbox_url: str,
    *,
    delivery: DeliveryConfig | None = None,
    limits: RateConfig | None = None,
) -> None:
    """Run a worker in burst mode (poll_delay 0) until the queue is empty: no sleeps in tests."""
    worker = create_worker(
        WorkerConfig(
            redis_url=redis_url,
            access_token=SecretStr(ACCESS_TOKEN),
            graph_base_url=sandbox_url,
            burst=True,
            poll_delay_s=0,
            health_probe_s=None,
            delivery=delivery
            or DeliveryConfig(max_attempts=20, backoff_base_s=0.01, backoff_cap_s=0.05),
            limits=limits or RateConfig(),
        )
    )
    try:
        await worker.main()
    finally:
        await worker.close()


PNID = DEFAULT_PHONE_NUMBER_ID
CUSTOMER = "+16505551234"
STRANGER = "+16505559876"

TEXT = {"type": "text", "text": {"body": "Your order shipped"}}
TEMPLATE = {"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}}


class Pipeline:
    """A producer, a way to run workers in burst mode, and readers for the outcome."""

    def __init__(self, redis: Redis, redis_url: str, sandbox_url: str) -> None:
        self.redis = redis
        self.producer = Producer(redis)
        self.config = WorkerConfig(
            redis_url=redis_url,
            access_token=SecretStr(ACCESS_TOKEN),
            graph_base_url=sandbox_url,
            graph_timeout_s=2.0,
            burst=True,
            poll_delay_s=0,
            health_probe_s=None,
            delivery=DeliveryConfig(
                max_attempts=4, backoff_base_s=0.01, backoff_cap_s=0.05, pause_check_s=0.01
            ),
        )
        self.dead_letters = DeadLetterStore(redis, StatusStore(redis, retention_s=3600))
        self.pauses = PauseStore(redis)
        self.windows = WindowStore(redis)

    async def customer_writes(self, sandbox: SandboxClient, number: str = CUSTOMER) -> None:
        """The customer writes in: Meta's window opens, and waq's (as its webhook would)."""
        inbound = await sandbox.inbound(number)
        message = inbound["message"]
        await self.windows.record_inbound(PNID, message["from"], float(message["timestamp"]))

    async def send(
        self, to: str = CUSTOMER, message: dict[str, Any] | None = None, **extra: Any
    ) -> Enqueued:
        return await self.producer.enqueue(
            {"phone_number_id": PNID, "to": to, "message": message or TEXT, **extra}
        )

    async def run_worker(self, **overrides: Any) -> None:
        worker = create_worker(dataclasses.replace(self.config, **overrides))
        try:
            await worker.main()
        finally:
            await worker.close()

    async def status(self, message_id: str) -> MessageStatus:
        status = await self.producer.status(message_id)
        assert status is not None
        return status


async def events_in_stream(redis: Redis, *types: str) -> list[Event]:
    """The events really in the deployment's stream (all, or those of ``types``), in order."""
    events = [Event.from_entry(i, f) for i, f in await redis.xrange(keys.EVENTS)]
    return [e for e in events if not types or e.type in types]
