"""The Graph-compatible door: ``POST /{version}/{phone_number_id}/messages`` as Meta serves it.

Code written against Meta's Cloud API (by hand, or an SDK such as pywa) points its base URL
at the gateway and keeps working: the same request body, the same response shape, Meta's
error envelope and codes, and waq's queueing, limits, retries and dead letters behind it.
The message id in the answer is waq's, so status reads (``GET /v1/messages/{id}``) work
with it. The API key goes where the access token went (``Authorization: Bearer``), or in
``X-API-Key``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.convertors import Convertor, register_url_convertor

from gateway.fast_json import json_response
from gateway.meta_envelope import meta_error
from gateway.plain_route import PlainRoute
from gateway.state import GatewayState, state_of
from producer import limits
from producer.errors import IdempotencyKeyReused
from producer.recipient import wa_id_of
from producer.request import SendRequest
from worker.runner import MARK_READ_FUNCTION

__all__ = [
    "GRAPH_DOOR_PATH",
    "IDEMPOTENCY_KEY_HEADER",
    "add_graph_door",
    "fold_meta_body",
    "graph_door_fallback",
]

GRAPH_DOOR_PATH: Final = r"^/v[0-9]+\.[0-9]+/[0-9]{1,32}/messages$"
"""The door's paths (the request guard authenticates them with a Bearer key too)."""
_DOOR_PATH: Final = re.compile(GRAPH_DOOR_PATH)

# A Graph send body's fields that are not the message itself.
_ENVELOPE: Final = frozenset(
    {"messaging_product", "recipient_type", "to", "biz_opaque_callback_data", "phone_number_id",
     "idempotency_key", "metadata"}
)  # fmt: skip

_READ_TIMEOUT_S: Final = 10

IDEMPOTENCY_KEY_HEADER: Final[dict[str, Any]] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": limits.IDEMPOTENCY_KEY_MAX_CHARS},
    "description": "Repeat-safe key; wins over the body's.",
}
"""The header, declared in the OpenAPI document of a send door that reads it itself."""
_PARAMETERS: Final = [
    {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
     "description": "The Graph API version, such as v24.0."},
    {"name": "phone_number_id", "in": "path", "required": True, "schema": {"type": "string"},
     "description": "The sending number's Graph id."},
    IDEMPOTENCY_KEY_HEADER,
]  # fmt: skip


class _Version(Convertor[str]):
    """``v24.0``: Starlette's ``str`` takes any segment."""

    regex = r"v[0-9]+\.[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _GraphId(_Version):
    """A Graph object id: digits."""

    regex = "[0-9]{1,32}"


def add_graph_door(routes: APIRouter) -> None:
    """The door as a route of ``routes`` (the app's own, tried first), for its paths only.

    FastAPI tries routes in order; behind the ~80 others the door spent 70 µs of a 300 µs
    request matching them (py-spy). Its segments are typed (Starlette keeps convertors in one
    table by name, so they are registered here, when an app is built, not on import), so it
    takes no request meant for another route; ``graph_door_fallback``, included last, gives
    a malformed door path Meta's error rather than a 404.
    """
    register_url_convertor("graph_version", _Version())
    register_url_convertor("graph_id", _GraphId())
    routes.add_api_route(
        "/{version:graph_version}/{phone_number_id:graph_id}/messages",
        send_as_meta,
        methods=["POST"],
        tags=["Graph-compatible"],
        summary="Send a message, in Meta's own request and response shapes",
        response_model=None,
        openapi_extra={"parameters": _PARAMETERS},
        route_class_override=PlainRoute,  # it reads its own parameters and body
    )


graph_door_fallback = APIRouter(include_in_schema=False)


def fold_meta_body(body: dict[str, Any]) -> dict[str, Any]:
    """Meta's flat send body as waq's request: the message fields go into ``message``.

    ``messaging_product`` must be ``whatsapp`` and ``recipient_type`` ``individual`` (waq
    sends to people); the caller's ``biz_opaque_callback_data`` stays the request's own
    (waq sends it to Meta after its message id, and returns it with the status).
    """
    if body.get("messaging_product", "whatsapp") != "whatsapp":
        raise ValueError("messaging_product must be whatsapp")
    if body.get("recipient_type", "individual") != "individual":
        raise ValueError("recipient_type must be individual")
    folded: dict[str, Any] = {k: v for k, v in body.items() if k in _ENVELOPE}
    folded.pop("messaging_product", None)
    folded.pop("recipient_type", None)
    folded["message"] = {k: v for k, v in body.items() if k not in _ENVELOPE}
    return folded


def _invalid(exc: ValidationError) -> JSONResponse:
    """Meta's code for the first broken rule: 131008 missing, 100 anything else."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"] if "=" not in str(p))
    field = field.removeprefix("message.")
    if first["type"] == "missing":
        return meta_error(
            400, 131008, "(#131008) Required parameter is missing",
            f"The parameter {field} is required.",
        )  # fmt: skip
    return meta_error(400, 100, "(#100) Invalid parameter", f"Param {field}: {first['msg']}")


@graph_door_fallback.post("/{version}/{phone_number_id}/messages", response_model=None)
async def send_as_meta(request: Request) -> Response:
    """Take a Cloud API send body unchanged; answer as Meta does, with waq's message id.

    The path's parts, the header and the state come from the request and the answer is
    encoded here, as on /v1/messages (gateway.api): each parameter FastAPI resolves cost
    this door more than its own checks.
    """
    state = state_of(request)
    path: str = request.scope["path"]
    if not _DOOR_PATH.match(path):
        return meta_error(400, 100, "Unknown path components", path)
    phone_number_id: str = request.path_params["phone_number_id"]
    idempotency_key = request.headers.get("idempotency-key")
    try:
        body = orjson.loads(await request.body())
    except ValueError:
        return meta_error(400, 100, "(#100) Invalid parameter", "The request body is not JSON.")
    if not isinstance(body, dict):
        return meta_error(400, 100, "(#100) Invalid parameter", "The body is not an object.")
    if body.get("status") == "read":
        return await _mark_read(state, phone_number_id, body)
    try:
        data = fold_meta_body(body)
    except ValueError as exc:
        return meta_error(400, 100, "(#100) Invalid parameter", str(exc))
    data["phone_number_id"] = phone_number_id
    if idempotency_key is not None:
        data["idempotency_key"] = idempotency_key
    try:
        send = SendRequest.model_validate(data)
    except ValidationError as exc:
        return _invalid(exc)
    try:
        enqueued = await state.producer.enqueue(send)
    except IdempotencyKeyReused as exc:
        return meta_error(400, 100, "(#100) Invalid parameter", exc.detail)
    return json_response(
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": str(body.get("to")), "wa_id": wa_id_of(send.to)}],
            "messages": [{"id": enqueued.message_id}],
        }
    )


_READ_FIELDS: Final = frozenset({"messaging_product", "status", "message_id", "typing_indicator"})
# Ahead of every send in the queue: arq runs due jobs oldest score first, and a read receipt
# (the customer sees the blue ticks, or "typing...") must not wait behind a campaign.
_FIRST_IN_LINE: Final = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)


async def _mark_read(
    state: GatewayState, phone_number_id: str, body: dict[str, Any]
) -> JSONResponse:
    """Meta's read receipt, sent by a worker at once and answered as Meta answers it.

    Only workers hold the access token, so the gateway asks one (an arq job ahead of the
    queue) and waits for its answer.
    """
    if unknown := sorted(set(body) - _READ_FIELDS):
        return meta_error(400, 100, "(#100) Invalid parameter", f"Unknown field {unknown[0]}")
    message_id = body.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        return meta_error(
            400, 131008, "(#131008) Required parameter is missing",
            "The parameter message_id is required.",
        )  # fmt: skip
    typing = body.get("typing_indicator")
    if typing not in (None, {"type": "text"}):
        return meta_error(
            400, 100, "(#100) Invalid parameter", 'typing_indicator must be {"type": "text"}'
        )
    job = await state.redis.enqueue_job(
        MARK_READ_FUNCTION,
        _queue_name=state.config.queue_name,
        _defer_until=_FIRST_IN_LINE,
        _expires=timedelta(seconds=_READ_TIMEOUT_S),
        phone_number_id=phone_number_id,
        message_id=message_id,
        typing_indicator=typing is not None,
    )
    try:
        result: dict[str, Any] = (
            await job.result(timeout=_READ_TIMEOUT_S, poll_delay=0.05) if job else {}
        )
    except TimeoutError:
        return meta_error(
            503, 2, "(#2) Service temporarily unavailable",
            f"no waq worker sent the read receipt in {_READ_TIMEOUT_S} s", error_type="waq",
        )  # fmt: skip
    if not result.get("ok"):
        error = result.get("error") or {}
        code = error.get("code")
        return meta_error(
            int(error.get("http_status") or 400),
            code if isinstance(code, int) else 1,
            f"(#{code}) {error.get('title')}",
            str(error.get("details") or error.get("title")),
        )
    return JSONResponse({"success": True})
