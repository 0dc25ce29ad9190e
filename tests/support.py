"""Test helpers that are real servers, not mocks: a webhook receiver."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.server import BackgroundServer


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
