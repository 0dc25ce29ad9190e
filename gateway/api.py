"""``/v1``: send messages, read their status and conversations, run the health check."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.conversations import Conversation
from gateway.errors import ApiError, Conflict, NotFound
from gateway.fast_json import FastJsonRoute, json_response
from gateway.graph_door import IDEMPOTENCY_KEY_HEADER, fold_meta_body
from gateway.health import HealthReport, run_health_check
from gateway.kapso import is_kapso_message, kapso_to_meta
from gateway.plain_route import PlainRoute, read_json_body, request_body
from gateway.state import GatewayState, gateway_state, state_of
from gateway.status_out import MessageStatusOut
from producer import limits
from producer.broadcasts import (
    BroadcastProgress,
    Broadcasts,
    BroadcastSpec,
    Recipient,
    recipients_from_csv,
)
from producer.client import message_id_for
from producer.errors import FieldError, IdempotencyKeyReused, InvalidRequest
from producer.messages import Message, TemplateMessage
from producer.opt_outs import OptOuts
from producer.recipient import normalize_recipient, wa_id_of
from producer.request import MetadataKey, MetadataValue, SendRequest

__all__ = ["BatchIn", "SendMessageIn", "add_send_doors", "router"]

# No key dependency: the RequestGuard has refused a /v1 request without a key before FastAPI
# reads it, and a second check cost 28 µs of a 350 µs request (bench.http_doors). The
# OpenAPI document declares the key (gateway.errors.install_openapi).
router = APIRouter(prefix="/v1", route_class=FastJsonRoute)
State = Annotated[GatewayState, Depends(gateway_state)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Repeat-safe key; wins over the body's."),
]


class _Strict(BaseModel):
    """A request body that names an unknown field instead of ignoring it.

    A typo such as ``idempotencykey`` would otherwise turn deduplication off in silence.
    """

    model_config = ConfigDict(extra="forbid")


class SendMessageIn(_Strict):
    """One message to send; the sender defaults to WAQ_DEFAULT_PHONE_NUMBER_ID.

    Meta's own flat body (``messaging_product``, ``to``, ``type`` and its object) is taken
    too, with ``phone_number_id`` beside it: a Cloud API body pasted as it is.
    """

    @model_validator(mode="before")
    @classmethod
    def _meta_flat_body(cls, data: Any) -> Any:
        if isinstance(data, dict) and "message" not in data and not data.keys() <= {
            "phone_number_id", "to", "idempotency_key", "metadata", "biz_opaque_callback_data",
            "send_at", "priority",
        }:  # fmt: skip
            try:
                return fold_meta_body(data)
            except ValueError as exc:
                raise PydanticCustomError("meta_body", str(exc)) from None
        return data

    phone_number_id: str | None = None
    to: str = Field(description="Recipient with country code, e.g. +16505551234.")
    # Documented as a Message, validated once, as part of the SendRequest the route builds
    # (validating it here too was a second pass over the same body).
    message: SkipValidation[Message] = Field(
        description="A message in Meta's shape: {type, <type>: {...}}."
    )
    idempotency_key: str | None = Field(default=None, max_length=limits.IDEMPOTENCY_KEY_MAX_CHARS)
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=limits.METADATA_MAX_KEYS
    )
    biz_opaque_callback_data: str | None = Field(
        default=None,
        min_length=1,
        max_length=limits.CALLER_CALLBACK_DATA_MAX_CHARS,
        description="Your own tracking value, as in Meta's API: returned with the status.",
    )
    send_at: AwareDatetime | None = Field(
        default=None,
        description="Send at this time (ISO 8601 with an offset), at most 30 days ahead; "
        "cancellable until it leaves (DELETE /v1/messages/{id}).",
    )
    priority: Literal["interactive", "bulk"] | None = Field(
        default=None, description="interactive (default) goes ahead of bulk from one number."
    )


class ConversationMessageIn(_Strict):
    """A message into a conversation: Meta's shape, or Kapso's legacy body."""

    message: dict[str, Any] | None = Field(
        default=None, description="Meta-shaped ({type, <type>}) or Kapso's legacy body."
    )
    whatsapp_message: dict[str, Any] | None = Field(
        default=None, description="Kapso's other name for `message`."
    )
    idempotency_key: str | None = Field(default=None, max_length=limits.IDEMPOTENCY_KEY_MAX_CHARS)
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=limits.METADATA_MAX_KEYS
    )
    send_at: AwareDatetime | None = Field(default=None, description="As on /v1/messages.")


class Accepted(BaseModel):
    """A message was queued (or had been, for a repeated idempotency key)."""

    id: str
    status: str
    status_url: str
    created: bool


class BatchIn(_Strict):
    """Many messages; each is answered on its own."""

    messages: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


class BatchItem(BaseModel):
    """One item's answer: its id, or its error."""

    index: int
    id: str | None = None
    status: str | None = None
    error: dict[str, Any] | None = None


class BatchOut(BaseModel):
    """Per-item answers, in request order."""

    accepted: int
    rejected: int
    results: list[BatchItem]


class HealthCheckIn(_Strict):
    """Which number to check, and optionally where to send a test message."""

    phone_number_id: str | None = None
    to: str | None = Field(default=None, description="A customer who wrote in recently.")
    text: str | None = Field(default=None, max_length=4096)


class SandboxInboundIn(_Strict):
    """A simulated customer message (sandbox only)."""

    from_: str = Field(alias="from")
    text: str = "Hi"
    phone_number_id: str | None = None


def _sender(state: GatewayState, phone_number_id: str | None) -> str:
    sender = phone_number_id or state.config.default_phone_number_id
    if sender is None:
        raise InvalidRequest(
            [
                FieldError(
                    "phone_number_id",
                    "missing",
                    "give phone_number_id or set WAQ_DEFAULT_PHONE_NUMBER_ID",
                )
            ]
        )
    return sender


def _request(data: dict[str, Any], *, prefix: str = "") -> SendRequest:
    try:
        return SendRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest.from_validation_error(exc, prefix=prefix) from None


async def _enqueue(state: GatewayState, request: SendRequest) -> Response:
    """Queue a request; ``Accepted``, answered with 202."""
    enqueued = await state.producer.enqueue(request)
    return json_response(
        {
            "id": enqueued.message_id,
            "status": enqueued.state.value,
            "status_url": f"/v1/messages/{enqueued.message_id}",
            "created": enqueued.created,
        },
        status_code=202,
    )


# The send doors are plain routes: they read the body, the Idempotency-Key header and the
# state from the request and answer with a ready Response. FastAPI's resolution of each
# parameter, and its validation of a returned model, cost the hottest route more than its
# own work (bench.http_doors, the gateway's CPU per request); ``add_send_doors`` declares
# them for the OpenAPI document.
async def send_message(http: Request) -> Response:
    """Validate and queue one message; answers at once with its id and status URL."""
    state = state_of(http)
    body = await read_json_body(http, SendMessageIn)
    data = {name: value for name, value in body if value is not None}
    data["phone_number_id"] = _sender(state, body.phone_number_id)
    data["idempotency_key"] = http.headers.get("idempotency-key") or body.idempotency_key
    return await _enqueue(state, _request(data))


def _item_error(exc: InvalidRequest) -> dict[str, Any]:
    """A batch item's error, in the shape of a whole request's."""
    return {
        "error": exc.code,
        "detail": exc.detail,
        "field": exc.field,
        "errors": [e.as_dict() for e in exc.errors],
    }


# The batch's answer is ``BatchOut``, built as plain dicts: a model per item, validated
# again by FastAPI, was a tenth of a batch message's CPU.
async def send_batch(http: Request) -> Response:
    """Queue each valid item; an invalid item is answered with its error and sinks nothing else."""
    state = state_of(http)
    body = await read_json_body(http, BatchIn)
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, SendRequest]] = []
    for index, item in enumerate(body.messages):
        try:
            data = {**item, "phone_number_id": _sender(state, item.get("phone_number_id"))}
            valid.append((index, _request(data)))
        except InvalidRequest as exc:
            results.append(_refused(index, exc))
    templated = [
        (i, r.message.template) for i, r in valid if isinstance(r.message, TemplateMessage)
    ]
    checked = await state.producer.templates.check([("", t) for _, t in templated])
    refused = {i: found for (i, _), found in zip(templated, checked, strict=True) if found}
    for index, found in refused.items():
        results.append(_refused(index, InvalidRequest(found)))
    valid = [(i, r) for i, r in valid if i not in refused]
    enqueued = (
        await state.producer.enqueue_many([r for _, r in valid], check_templates=False)
        if valid
        else []
    )  # the templates were checked item by item above
    for (index, request), e in zip(valid, enqueued, strict=True):
        if e.key_reused:
            reused = IdempotencyKeyReused(str(request.idempotency_key), e.message_id)
            results.append(_refused(index, reused))
        else:
            results.append(
                {"index": index, "id": e.message_id, "status": e.state.value, "error": None}
            )
    results.sort(key=lambda item: int(item["index"]))
    accepted = sum(1 for item in results if item["error"] is None)
    return json_response(
        {"accepted": accepted, "rejected": len(body.messages) - accepted, "results": results},
        status_code=202,
    )


def _refused(index: int, exc: InvalidRequest) -> dict[str, Any]:
    """A ``BatchItem`` that was not queued."""
    return {"index": index, "id": None, "status": None, "error": _item_error(exc)}


def add_send_doors(routes: APIRouter) -> None:
    """The send doors as routes of ``routes``: the app's own, ahead of its routers.

    Matching a route inside an included router cost 10 to 20 µs a request (py-spy).
    """
    routes.add_api_route(
        "/v1/messages",
        send_message,
        methods=["POST"],
        status_code=202,
        summary="Send one message",
        response_model=Accepted,
        route_class_override=PlainRoute,
        openapi_extra={**request_body(SendMessageIn), "parameters": [IDEMPOTENCY_KEY_HEADER]},
    )
    routes.add_api_route(
        "/v1/messages/batch",
        send_batch,
        methods=["POST"],
        status_code=202,
        summary="Send many messages",
        response_model=BatchOut,
        route_class_override=PlainRoute,
        openapi_extra=request_body(BatchIn),
    )


@router.post(
    "/conversations/{conversation_id}/messages",
    status_code=202,
    summary="Send into a conversation",
    response_model=Accepted,
)
async def send_to_conversation(
    conversation_id: str,
    state: State,
    body: ConversationMessageIn,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Send to the customer of a conversation; free-form only while the window is open."""
    conversation = await state.conversations.get(conversation_id)
    if conversation is None:
        raise NotFound(
            "conversation not found: the customer must message you first",
            code="conversation_not_found",
        )
    message = body.message if body.message is not None else body.whatsapp_message
    if message is None:
        raise InvalidRequest([FieldError("message", "missing", "give a message object")])
    if is_kapso_message(message):
        message = kapso_to_meta(message)
    request = _request(
        {
            "phone_number_id": conversation.phone_number_id,
            "to": conversation.customer,
            "message": message,
            "idempotency_key": idempotency_key or body.idempotency_key,
            "metadata": {**body.metadata, "conversation_id": conversation_id},
            "send_at": body.send_at.isoformat() if body.send_at else None,
        }
    )
    if not request.message.is_template and not conversation.window.open:
        raise Conflict(
            "the 24-hour window is closed: send an approved template (type=template) instead",
            code="window_closed",
        )
    return await _enqueue(state, request)


@router.get("/messages/{message_id}", summary="A message's state and history")
async def get_message(message_id: str, state: State) -> MessageStatusOut:
    """queued, sending, retrying, accepted, sent, delivered, read, or dead (with the error).

    Times are ISO 8601 UTC; the history is in the order waq recorded its steps.
    """
    status = await state.statuses.get(message_id)
    if status is None:
        raise NotFound("no such message (or past its retention)", code="message_not_found")
    return MessageStatusOut.of(status)


class BroadcastIn(_Strict):
    """A template to many recipients, given as JSON or as CSV.

    CSV: a ``to`` column, then one column per body parameter. A file with a bad row is refused
    whole, every bad row named.
    """

    phone_number_id: str | None = None
    template: str = Field(min_length=1, max_length=512)
    language: str = "en_US"
    recipients: list[Recipient] | None = None
    csv: str | None = Field(default=None, max_length=8 * 1024 * 1024)
    send_at: AwareDatetime | None = None
    name: str = Field(default="", max_length=200)
    share: float | None = Field(
        default=None, gt=0, le=1, description="At most this share of the number's limit."
    )


@router.post("/broadcasts", status_code=202, summary="Send a template to many recipients")
async def create_broadcast(body: BroadcastIn, state: State) -> BroadcastProgress:
    """Every recipient's message is queued as bulk traffic.

    The same upload twice is one broadcast: each recipient's idempotency key derives from it.
    """
    if (body.recipients is None) == (body.csv is None):
        raise InvalidRequest([FieldError("recipients", "one_of", "give recipients or csv")])
    recipients = body.recipients if body.recipients is not None else recipients_from_csv(
        body.csv or ""
    )  # fmt: skip
    try:
        spec = BroadcastSpec(
            phone_number_id=_sender(state, body.phone_number_id), template=body.template,
            language=body.language, recipients=recipients, send_at=body.send_at, name=body.name,
            share=body.share,
        )  # fmt: skip
    except ValidationError as exc:
        raise InvalidRequest.from_validation_error(exc) from None
    broadcast, _ = await Broadcasts(state.producer).create(spec)
    return broadcast


@router.get("/broadcasts/{broadcast_id}", summary="A broadcast's progress and funnel")
async def get_broadcast(broadcast_id: str, state: State) -> BroadcastProgress:
    """How many of its messages were queued, sent, delivered, read, failed, dead, cancelled."""
    return await _broadcast(state, broadcast_id)


@router.post("/broadcasts/{broadcast_id}/{action}", summary="Pause, resume or cancel a broadcast")
async def broadcast_action(broadcast_id: str, action: str, state: State) -> BroadcastProgress:
    """pause: its unsent messages wait; resume; cancel: every unsent message is cancelled."""
    broadcasts = Broadcasts(state.producer)
    await _broadcast(state, broadcast_id)
    if action == "pause":
        await broadcasts.pause(broadcast_id)
    elif action == "resume":
        await broadcasts.resume(broadcast_id)
    elif action == "cancel":
        await broadcasts.cancel(broadcast_id)
    else:
        raise NotFound(f"no broadcast action {action!r}", code="unknown_action")
    return await _broadcast(state, broadcast_id)


async def _broadcast(state: GatewayState, broadcast_id: str) -> BroadcastProgress:
    found = await Broadcasts(state.producer).get(broadcast_id)
    if found is None:
        raise NotFound(f"no broadcast {broadcast_id}", code="broadcast_not_found")
    return found


class OptOutsOut(BaseModel):
    """A sender's opt-out list."""

    phone_number_id: str
    customers: list[str]


@router.get("/opt-outs", summary="A sender's opt-out list")
async def list_opt_outs(
    state: State, phone_number_id: Annotated[str | None, Query()] = None
) -> OptOutsOut:
    """Customers who wrote a stop keyword, were reported by Meta (131050), or were added."""
    sender = _sender(state, phone_number_id)
    return OptOutsOut(phone_number_id=sender, customers=await OptOuts(state.redis).all(sender))


@router.put("/opt-outs/{customer}", summary="Opt a customer out")
async def add_opt_out(
    customer: str, state: State, phone_number_id: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """Marketing templates to them are refused from now on (an ``optout.added`` event)."""
    sender = _sender(state, phone_number_id)
    added = await OptOuts(state.redis).add(sender, _customer(customer))
    return {"phone_number_id": sender, "customer": _customer(customer), "changed": added}


@router.delete("/opt-outs/{customer}", summary="Opt a customer back in")
async def remove_opt_out(
    customer: str, state: State, phone_number_id: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """They may get marketing templates again (an ``optout.removed`` event)."""
    sender = _sender(state, phone_number_id)
    removed = await OptOuts(state.redis).remove(sender, _customer(customer))
    return {"phone_number_id": sender, "customer": _customer(customer), "changed": removed}


def _customer(customer: str) -> str:
    try:
        return normalize_recipient(customer)
    except ValueError as exc:
        raise InvalidRequest([FieldError("customer", "phone_number", str(exc))]) from None


class Cancelled(BaseModel):
    """A message taken back before it was handed to Meta."""

    id: str
    state: str


@router.delete("/messages/{message_id}", summary="Cancel a message not yet sent")
async def cancel_message(message_id: str, state: State) -> Cancelled:
    """It becomes ``cancelled``, and its conversation's next message moves up.

    Only a scheduled, queued or retrying message: one sending or later is a 409 with its state.
    """
    return await _cancel(state, message_id)


@router.delete("/messages", summary="Cancel a message by its idempotency key")
async def cancel_by_key(
    state: State,
    idempotency_key: Annotated[str, Query(min_length=1, max_length=255)],
    phone_number_id: Annotated[str | None, Query()] = None,
) -> Cancelled:
    """The message the key enqueued (from the number given, or the default one)."""
    sender = _sender(state, phone_number_id)
    return await _cancel(state, message_id_for(sender, idempotency_key))


async def _cancel(state: GatewayState, message_id: str) -> Cancelled:
    result = await state.producer.cancel(message_id)
    if result.state is None:
        raise NotFound("no such message (or past its retention)", code="message_not_found")
    if not result.cancelled:
        raise Conflict(
            f"{message_id} is {result.state.value}: it was handed to Meta (or is final) and "
            "can no longer be cancelled",
            code="not_cancellable", extra={"state": result.state.value},
        )  # fmt: skip
    return Cancelled(id=message_id, state=result.state.value)


@router.get("/conversations/{conversation_id}", summary="A conversation and its window")
async def get_conversation(conversation_id: str, state: State) -> Conversation:
    """Whether the window is open, when it closes, and the last inbound time."""
    conversation = await state.conversations.get(conversation_id)
    if conversation is None:
        raise NotFound(
            "conversation not found: the customer must message you first",
            code="conversation_not_found",
        )
    return conversation


@router.get("/conversations", summary="Find a conversation by its two numbers")
async def find_conversation(
    state: State,
    customer: Annotated[str, Query(description="The customer's number, with country code.")],
    phone_number_id: Annotated[str | None, Query(description="The business number's id.")] = None,
) -> Conversation:
    """Learn a conversation's id from the business number and the customer's number."""
    try:
        wa_id = wa_id_of(normalize_recipient(customer))
    except ValueError as exc:
        raise InvalidRequest([FieldError("customer", "phone_number", str(exc))]) from None
    sender = _sender(state, phone_number_id)
    conversation = await state.conversations.find(sender, wa_id)
    if conversation is None:
        raise NotFound(
            "conversation not found: the customer must message you first",
            code="conversation_not_found",
        )
    return conversation


@router.post("/health-check", summary="Check a configuration end to end")
async def health_check(body: HealthCheckIn, state: State) -> HealthReport:
    """Redis, workers, the number's access and health, webhooks; optionally a test message."""
    to = None
    if body.to is not None:
        try:
            to = normalize_recipient(body.to)
        except ValueError as exc:
            raise InvalidRequest([FieldError("to", "phone_number", str(exc))]) from None
    return await run_health_check(
        state.redis,
        state.producer,
        phone_number_id=_sender(state, body.phone_number_id),
        queue_name=state.config.queue_name,
        to=to,
        text=body.text,
        timeout_s=state.config.health_timeout_s,
    )


@router.post("/sandbox/inbound", summary="Simulate a customer writing in (sandbox only)")
async def sandbox_inbound(body: SandboxInboundIn, state: State) -> dict[str, Any]:
    """Ask the sandbox to post a signed inbound webhook, which reaches this gateway like Meta's."""
    base = state.config.graph_base_url.rstrip("/")
    payload: dict[str, Any] = {"from": body.from_, "text": body.text}
    sender = body.phone_number_id or state.config.default_phone_number_id
    if sender:
        payload["phone_number_id"] = sender
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/_sandbox/inbound", json=payload)
    except httpx.HTTPError:
        response = None
    if response is None or response.status_code == 404:
        raise ApiError(
            "WAQ_GRAPH_BASE_URL is not a waq sandbox", code="not_sandbox", status_code=404
        )
    if response.status_code != 200:
        raise ApiError(response.text, code="sandbox_refused", status_code=422)
    result: dict[str, Any] = response.json()
    message = result["message"]
    result["conversation_id"] = (
        await state.conversations.id_for(sender, message["from"]) if sender else None
    )
    return result
