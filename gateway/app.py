"""The gateway app: `/v1` for services, `/webhooks/whatsapp` for Meta, probes for ops."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from gateway.api import BatchIn, SendMessageIn, add_send_doors, router
from gateway.console import console_router
from gateway.console_auth import LoginRequired
from gateway.errors import ApiError, error_body, install_error_handlers, install_openapi
from gateway.graph_door import GRAPH_DOOR_PATH, add_graph_door, graph_door_fallback
from gateway.guard import RequestGuard
from gateway.state import GatewayConfig, GatewayState, gateway_state, key_matches
from gateway.subscriptions_api import subscriptions_router
from gateway.webhooks import verify_signature
from producer import keys

__all__ = ["create_app"]

log = structlog.get_logger("waq.gateway")
State = Annotated[GatewayState, Depends(gateway_state)]
_READY_TIMEOUT_S = 1.0


def create_app(config: GatewayConfig) -> FastAPI:
    """The gateway as an ASGI app; Redis is opened at startup and closed at shutdown."""
    app = FastAPI(
        title="waq gateway",
        version="0.1.0",
        description="Send WhatsApp messages through waq's pipeline; receive Meta's webhooks.",
        lifespan=_lifespan(config),
    )
    install_error_handlers(app)
    install_openapi(app, bodies=[SendMessageIn, BatchIn])  # the plain routes' bodies (gateway.api)
    app.add_middleware(
        RequestGuard,
        key_matches=lambda given: key_matches(given, config.api_keys + config.admin_keys),
        max_body_bytes=config.max_body_bytes,
        graph_paths=GRAPH_DOOR_PATH,
    )
    # The send doors first, as the app's own routes: FastAPI tries routes in order, and a
    # route inside an included router costs more to reach (gateway.plain_route).
    add_graph_door(app.router)  # it matches only its own paths
    add_send_doors(app.router)
    for routes in (router, subscriptions_router, console_router):
        app.include_router(routes)

    async def login_required(request: Request, exc: Exception) -> Response:
        target = urllib.parse.urlencode({"next": request.url.path})
        return RedirectResponse(f"/console/login?{target}", status_code=303)

    app.add_exception_handler(LoginRequired, login_required)

    @app.get("/webhooks/whatsapp", response_class=PlainTextResponse, tags=["webhooks"])
    async def verify_webhook(
        state: State,
        mode: Annotated[str | None, Query(alias="hub.mode")] = None,
        token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
        challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
    ) -> Response:
        """Meta's subscription handshake: echo the challenge when the verify token matches."""
        expected = state.config.verify_token
        if mode != "subscribe" or expected is None or token is None or not _same(token, expected):
            raise ApiError("verification failed", code="verification_failed", status_code=403)
        await state.redis.hset(keys.WEBHOOK_SEEN, "verified_at", repr(time.time()))  # type: ignore[misc]
        return PlainTextResponse(challenge or "")

    @app.post("/webhooks/whatsapp", tags=["webhooks"])
    async def receive_webhook(request: Request, state: State) -> dict[str, Any]:
        """Meta's signed webhook: checked over the raw body, then applied once per item."""
        raw = await request.body()
        secret = state.config.app_secret
        if secret is None:
            raise ApiError(
                "WAQ_APP_SECRET is not set; webhooks are refused",
                code="webhooks_disabled",
                status_code=403,
            )
        if not verify_signature(raw, request.headers.get("x-hub-signature-256"), secret):
            log.warning("webhook.refused", reason="bad signature")
            raise ApiError(
                "missing or wrong X-Hub-Signature-256", code="invalid_signature", status_code=401
            )
        try:
            payload = json.loads(raw)
        except ValueError:
            raise ApiError("body is not JSON", code="invalid_json", status_code=400) from None
        if not isinstance(payload, dict):
            raise ApiError("body is not a JSON object", code="invalid_json", status_code=400)
        await state.redis.hset(keys.WEBHOOK_SEEN, "last_post_at", repr(time.time()))  # type: ignore[misc]
        result = await state.webhooks.handle(payload)
        await state.webhooks.forward_raw(raw, payload)
        return {"ok": True, **{k: getattr(result, k) for k in result.__slots__}}

    @app.get("/metrics", tags=["probes"], response_class=PlainTextResponse)
    async def metrics(state: State) -> Response:
        """Prometheus exposition: queue depth, in flight, dead letters, paused numbers."""
        return Response(await state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, bool]:
        """The process is alive."""
        return {"ok": True}

    @app.get("/readyz", tags=["probes"])
    async def readyz(state: State) -> Response:
        """Redis answers within a second: the gateway can take requests.

        The pool rides out a Redis restart by retrying for ~30 s; a probe must not wait that
        long to say "not ready".
        """
        try:
            await asyncio.wait_for(state.redis.ping(), timeout=_READY_TIMEOUT_S)
        except Exception:  # whatever the failure, the answer is "not ready"
            return JSONResponse(
                error_body("not_ready", "Redis is unreachable"),
                status_code=503,
                headers={"Retry-After": "2"},
            )
        return JSONResponse({"ok": True})

    # Last: its pattern (/{version}/{id}/messages) must not shadow a waq route.
    app.include_router(graph_door_fallback)
    return app


def _lifespan(config: GatewayConfig) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Redis opened at startup (and a configured conversation key checked in), closed after."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = GatewayState.connect(config)
        app.state.gateway = state
        if config.conversation_key:
            # Leave the key's fingerprint in Redis now, before a producer without the key
            # could make one up (producer.conversation_ids).
            try:
                await state.conversations.ids.key()
            except RedisError as exc:
                log.warning("gateway.conversation_key_unchecked", error=str(exc))
        try:
            yield
        finally:
            await state.aclose()

    return lifespan


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
