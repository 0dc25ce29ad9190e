"""A webhook receiver for the events tests: a real HTTP server that verifies every delivery
with the ``standardwebhooks`` library and misbehaves on demand (500s, hangs, slow answers).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.server import BackgroundServer


@dataclass
class Delivery:
    """One verified request: its headers, body, and the events in it."""

    headers: dict[str, str]
    body: bytes
    at: float
    answered: int

    @property
    def events(self) -> list[dict[str, Any]]:
        payload = json.loads(self.body)
        return payload["data"] if payload.get("type") == "batch" else [payload]


@dataclass
class Receiver:
    """Verifies with ``secrets`` (any one may match) and answers by ``behaviour``.

    ``behaviour``: "ok"; "down" (503 always); "status:<n>" (always n); "slow:<s>" (200 after
    s seconds); "flaky" (seeded: some 500s and 429s, some 200s just after the sender's
    timeout, some hangs far past it: those are handled, and arrive twice).
    """

    secrets: list[str] = field(default_factory=list)
    behaviour: str = "ok"
    hang_s: float = 1.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    deliveries: list[Delivery] = field(default_factory=list)
    """Every verified request that was answered 2xx (whether the sender waited or not)."""
    refused: list[str] = field(default_factory=list)
    """Why each request that failed verification was refused."""
    requests: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    most_in_flight: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/events", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        self.requests += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        errors = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                break
            except WebhookVerificationError as exc:
                errors.append(str(exc))
        else:
            self.refused.append("; ".join(errors) or "no secret")
            return self._answer(401, "signature")
        status, delay = self._decide()
        if delay:
            await asyncio.sleep(delay)
        if 200 <= status < 300:
            self.deliveries.append(Delivery(headers, body, time.time(), status))
        return self._answer(status, "decided")

    def _decide(self) -> tuple[int, float]:
        if self.behaviour == "ok":
            return 200, 0.0
        if self.behaviour == "down":
            return 503, 0.0
        if self.behaviour.startswith("status:"):
            return int(self.behaviour.split(":", 1)[1]), 0.0
        if self.behaviour.startswith("slow:"):
            return 200, float(self.behaviour.split(":", 1)[1])
        roll = self.rng.random()
        if roll < 0.03:
            return 200, self.hang_s * 10  # hangs; handled long after the sender gave up
        if roll < 0.15:
            return 500, 0.0
        if roll < 0.22:
            return 200, self.hang_s  # processed, but after the sender gave up: it resends
        if roll < 0.3:
            return 429, 0.0
        return 200, 0.0

    def _answer(self, status: int, why: str) -> Response:
        self.answers[str(status)] = self.answers.get(str(status), 0) + 1
        return Response(why, status_code=status)

    def unique_events(self) -> dict[str, dict[str, Any]]:
        """The consumer-side dedupe: each event id once, first arrival kept."""
        seen: dict[str, dict[str, Any]] = {}
        for delivery in self.deliveries:
            for event in delivery.events:
                seen.setdefault(event["id"], event)
        return seen

    def arrivals(self) -> list[dict[str, Any]]:
        """Every event received, duplicates included, in arrival order."""
        return [event for delivery in self.deliveries for event in delivery.events]


class ReceiverServer(BackgroundServer):
    """A Receiver over real HTTP."""

    def __init__(self) -> None:
        self.receiver = Receiver()
        super().__init__(self.receiver.app())

    @property
    def events_url(self) -> str:
        return f"{self.url}/events"
