"""Test helpers that are real servers and workers, not mocks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.server import BackgroundServer
from worker.delivery import DeliveryConfig
from worker.limits import RateConfig
from worker.runner import WorkerConfig, create_worker

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
