"""The sandbox's HTTP face: Meta's Graph routes, and control routes under ``/_sandbox/``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sandbox.config import NumberConfig, SandboxConfig
from sandbox.faults import Fault
from sandbox.meta import FakeMeta, PendingStatus
from sandbox.meta_error import MetaError
from sandbox.webhooks import WebhookPoster, inbound_payload, status_item, statuses_payload

__all__ = ["DroppedByFault", "Sandbox", "create_app"]

_DEFAULT_FIELDS = ("id", "display_phone_number", "verified_name", "quality_rating")
_KNOWN_FIELDS = frozenset(
    {*_DEFAULT_FIELDS, "status", "throughput", "platform_type", "code_verification_status",
     "name_status", "whatsapp_business_manager_messaging_limit", "messaging_limit_tier",
     "health_status"}
)  # fmt: skip


class DroppedByFault(Exception):
    """Raised after the answer started, so the server drops the connection mid-answer."""


class _DroppedResponse(Response):
    """Starts a 200 answer, then fails, so the server closes the connection mid-answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"256")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise DroppedByFault


class Sandbox:
    """The fake Meta plus what it posts: one per server."""

    def __init__(self, config: SandboxConfig) -> None:
        self.meta = FakeMeta(config)
        self.webhooks = WebhookPoster(app_secret=config.app_secret, rng=self.meta.rng)
        self.webhooks.url = config.webhook_url
        self._tasks: set[asyncio.Task[None]] = set()
        # Statuses due to be posted, per business number. Like Meta, the sandbox batches
        # them into few webhooks: one POST per status cost its process ~5 ms of httpx CPU,
        # and at a few hundred sends a second it could no longer answer the sends.
        self._due: dict[str, list[dict[str, Any]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a webhook sequence in the background, holding a reference until it ends."""

        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post_statuses(self, pending: PendingStatus) -> None:
        """``sent``, ``delivered``, ``read`` (or ``failed`` with errors), a beat apart."""
        entry, delay_s = pending.entry, self.meta.config.status_delay_s
        if pending.failure is not None:
            steps = ["failed"]
        elif self.meta.config.send_read_receipts:
            steps = ["sent", "delivered", "read"]
        else:
            steps = ["sent", "delivered"]
        for status in steps:
            await asyncio.sleep(delay_s)
            entry.statuses.append(status)
            if pending.failure is not None:
                entry.errors.append(pending.failure.webhook_error())
            self._due.setdefault(entry.phone_number_id, []).append(
                status_item(entry, status, pending.failure)
            )
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self, *, batch: int = 100, every_s: float = 0.02) -> None:
        """Post due statuses, up to ``batch`` per webhook, until none are left."""
        while self._due:
            await asyncio.sleep(every_s)
            for phone_number_id in list(self._due):
                items = self._due.pop(phone_number_id)
                number = self.meta.numbers[phone_number_id]
                for start in range(0, len(items), batch):
                    chunk = items[start : start + batch]
                    await self.webhooks.post(statuses_payload(phone_number_id, number, chunk))

    async def aclose(self) -> None:
        """Cancel pending webhooks and close the client."""
        if self._flusher is not None:
            self._tasks.add(self._flusher)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.webhooks.aclose()


def _meta_error(exc: MetaError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.http_status)


def _sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError:
        return None


async def send_message(request: Request) -> Response:
    """``POST /{version}/{phone_number_id}/messages``."""
    sandbox = _sandbox(request)
    meta = sandbox.meta
    if meta.faults.latency_ms:
        await asyncio.sleep(meta.faults.latency_ms / 1000)
    body = await _json_body(request)
    rng = meta.request_rng(body)
    fault = meta.faults.draw(rng)
    if fault is Fault.SERVER_ERROR:
        meta.outcomes["server_error"] = meta.outcomes.get("server_error", 0) + 1
        code, title, status = rng.choice(
            [(131000, "Something went wrong", 500), (131016, "Service unavailable", 503)]
        )
        return _meta_error(MetaError(code, title, "Sandbox: injected fault.", http_status=status))
    if fault is Fault.HANG:
        meta.outcomes["hang"] = meta.outcomes.get("hang", 0) + 1
        await asyncio.sleep(meta.faults.hang_s)
        return Response(status_code=504)
    try:
        meta.authorize(request.headers.get("authorization"))
        if isinstance(body, dict) and body.get("status") == "read":
            return JSONResponse(meta.mark_read(request.path_params["phone_number_id"], body))
        answer, pending = meta.send(request.path_params["phone_number_id"], body)
    except MetaError as exc:
        return _meta_error(exc)
    sandbox.spawn(sandbox.post_statuses(pending))
    if fault is Fault.DROP:
        meta.outcomes["dropped"] = meta.outcomes.get("dropped", 0) + 1
        return _DroppedResponse()
    return JSONResponse(answer)


async def message_templates(request: Request) -> Response:
    """``GET /{version}/{waba_id}/message_templates``: the templates, as Meta lists them."""
    meta = _sandbox(request).meta
    try:
        meta.authorize(request.headers.get("authorization"))
    except MetaError as exc:
        return _meta_error(exc)
    return JSONResponse(meta.message_templates())


async def read_phone_number(request: Request) -> Response:
    """``GET /{version}/{phone_number_id}?fields=...``."""
    meta = _sandbox(request).meta
    try:
        meta.authorize(request.headers.get("authorization"))
        phone_number_id = request.path_params["phone_number_id"]
        number = meta.number(phone_number_id)
    except MetaError as exc:
        return _meta_error(exc)
    raw = request.query_params.get("fields")
    fields = [f.strip() for f in raw.split(",") if f.strip()] if raw else list(_DEFAULT_FIELDS)
    for name in fields:
        if name not in _KNOWN_FIELDS:
            return _meta_error(
                MetaError(100, "Invalid parameter", f"Tried accessing nonexisting field ({name})")
            )
    health_entity: dict[str, Any] = {
        "entity_type": "PHONE_NUMBER",
        "id": phone_number_id,
        "can_send_message": number.health,
    }
    if number.health == "LIMITED":
        health_entity["additional_info"] = ["Sandbox: this number is limited."]
    elif number.health == "BLOCKED":
        health_entity["errors"] = [
            {
                "error_code": 141006,
                "error_description": "Sandbox: this number is blocked.",
                "possible_solution": "Unblock it with POST /_sandbox/numbers/{id}.",
            }
        ]
    values: dict[str, Any] = {
        "id": phone_number_id,
        "display_phone_number": number.display_phone_number,
        "verified_name": number.verified_name,
        "quality_rating": number.quality_rating,
        "status": number.status,
        "throughput": {"level": "HIGH" if number.mps > 80 else "STANDARD"},
        "platform_type": "CLOUD_API",
        "code_verification_status": "VERIFIED",
        "name_status": "APPROVED",
        "whatsapp_business_manager_messaging_limit": "TIER_2K",
        "messaging_limit_tier": "TIER_2K",
        "health_status": {
            "can_send_message": number.health,
            "entities": [
                health_entity,
                *(
                    {
                        "entity_type": kind,
                        "id": f"sandbox-{kind.lower()}",
                        "can_send_message": "AVAILABLE",
                    }
                    for kind in ("WABA", "BUSINESS", "APP")
                ),
            ],
        },
    }
    return JSONResponse({name: values[name] for name in ("id", *fields) if name in values})


# -- control routes ---------------------------------------------------------------------


def _control(
    handler: Callable[[Sandbox, dict[str, Any], Request], Awaitable[Any]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        body = await _json_body(request) if request.method == "POST" else {}
        if not isinstance(body, dict):
            body = {}
        try:
            result = await handler(_sandbox(request), body, request)
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": "invalid_control_request", "detail": str(exc)}, 400)
        except MetaError as exc:
            return _meta_error(exc)
        return JSONResponse(result)

    return endpoint


async def _health(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    return {"ok": True}


async def _ledger(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    q = request.query_params
    entries = [
        e.as_dict()
        for e in sandbox.meta.ledger
        if q.get("phone_number_id") in (None, e.phone_number_id)
        and q.get("wa_id") in (None, e.wa_id)
        and q.get("callback_data") in (None, e.callback_data)
    ]
    return {"messages": entries, "count": len(entries)}


async def _stats(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    return sandbox.meta.stats()


async def _webhook_log(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    return {"webhooks": sandbox.webhooks.log, "url": sandbox.webhooks.url}


async def _faults(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    sandbox.meta.faults.update(body)
    sandbox.webhooks.duplicate_ratio = sandbox.meta.faults.duplicate_webhook_ratio
    return sandbox.meta.faults.as_dict()


async def _inbound(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    meta = sandbox.meta
    phone_number_id = str(body.get("phone_number_id") or next(iter(meta.numbers)))
    sender = str(body["from"])
    timestamp = body.get("timestamp")
    message = meta.receive(
        phone_number_id,
        sender,
        str(body.get("text", "Hi")),
        float(timestamp) if timestamp is not None else None,
    )
    payload = inbound_payload(
        phone_number_id,
        meta.numbers[phone_number_id],
        message,
        str(body.get("profile_name", "Customer")),
    )
    await sandbox.webhooks.post(payload)
    return {
        "phone_number_id": phone_number_id,
        "message": message,
        "window_open": meta.window_open(phone_number_id, message["from"]),
    }


async def _recipient(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    meta = sandbox.meta
    wa_id = "".join(ch for ch in request.path_params["wa_id"] if ch.isdigit())
    if "registered" in body:
        (meta.unregistered.discard if body["registered"] else meta.unregistered.add)(wa_id)
    if "async_failure_code" in body:
        code = body["async_failure_code"]
        if code is None:
            meta.async_failures.pop(wa_id, None)
        else:
            meta.async_failures[wa_id] = int(code)
    return {
        "wa_id": wa_id,
        "registered": wa_id not in meta.unregistered,
        "async_failure_code": meta.async_failures.get(wa_id),
    }


async def _number(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    phone_number_id = request.path_params["phone_number_id"]
    if body.get("create") and phone_number_id not in sandbox.meta.numbers:
        sandbox.meta.numbers[phone_number_id] = NumberConfig()  # until the next reset
    number = sandbox.meta.number(phone_number_id)
    for name in ("mps", "health", "status", "quality_rating", "send_error_code"):
        if name in body:
            value = body[name]
            if name in ("mps", "send_error_code") and value is not None:
                value = int(value)
            if name == "health" and value not in ("AVAILABLE", "LIMITED", "BLOCKED"):
                raise ValueError("health must be AVAILABLE, LIMITED or BLOCKED")
            setattr(number, name, value)
    return {f: getattr(number, f) for f in number.__slots__}


async def _token(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    if "expired" in body:
        sandbox.meta.token_expired = bool(body["expired"])
    if "access_token" in body:
        sandbox.meta.access_token = str(body["access_token"])
    return {"expired": sandbox.meta.token_expired}


async def _webhook(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    sandbox.webhooks.url = body.get("url")
    return {"url": sandbox.webhooks.url}


async def _reset(sandbox: Sandbox, body: dict[str, Any], request: Request) -> Any:
    sandbox.meta.reset()
    sandbox.webhooks.log.clear()
    sandbox.webhooks.duplicate_ratio = 0.0
    return {"reset": True}


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app; ``app.state.sandbox`` holds its state."""
    sandbox = Sandbox(config or SandboxConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sandbox.aclose()

    routes = [
        Route("/_sandbox/health", _control(_health)),
        Route("/_sandbox/ledger", _control(_ledger)),
        Route("/_sandbox/stats", _control(_stats)),
        Route("/_sandbox/webhooks", _control(_webhook_log)),
        Route("/_sandbox/faults", _control(_faults), methods=["GET", "POST"]),
        Route("/_sandbox/inbound", _control(_inbound), methods=["POST"]),
        Route("/_sandbox/recipients/{wa_id}", _control(_recipient), methods=["POST"]),
        Route("/_sandbox/numbers/{phone_number_id}", _control(_number), methods=["POST"]),
        Route("/_sandbox/token", _control(_token), methods=["POST"]),
        Route("/_sandbox/webhook", _control(_webhook), methods=["POST"]),
        Route("/_sandbox/reset", _control(_reset), methods=["POST"]),
        Route("/{version:str}/{phone_number_id:str}/messages", send_message, methods=["POST"]),
        Route("/{version:str}/{waba_id:str}/message_templates", message_templates, methods=["GET"]),
        Route("/{version:str}/{phone_number_id:str}", read_phone_number, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sandbox = sandbox
    return app
