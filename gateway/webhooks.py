"""Meta's webhooks, applied: inbound messages open windows and reach agents; statuses move messages.

Meta delivers at least once, late and out of order: each item is applied once (a marker per
inbound message id and per wamid+status), and status transitions only move forward.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from gateway.conversations import ConversationStore
from producer import keys
from producer.events import EventType
from producer.opt_outs import DEFAULT_OPT_IN_KEYWORDS, DEFAULT_OPT_OUT_KEYWORDS, keyword_action
from producer.request import message_id_of_callback
from producer.status import MessageState, MessageStatus
from producer.status_store import StatusStore
from worker.dead_letters import DeadLetter, DeadLetterStore
from worker.error_table import Action, rule_for
from worker.pauses import PauseStore
from worker.windows import WindowStore

__all__ = ["WebhookProcessor", "WebhookResult", "verify_signature"]

log = structlog.get_logger("waq.gateway")

_DEDUPE_TTL_S: Final = 8 * 24 * 3600  # Meta retries a webhook for up to 7 days
_STATUS_STATES: Final = {
    "sent": MessageState.SENT,
    "delivered": MessageState.DELIVERED,
    "read": MessageState.READ,
    "played": MessageState.READ,
}


_DELIVERED: Final = (MessageState.DELIVERED, MessageState.READ)
_ID: Final = re.compile(r"^[0-9]{1,32}$")
_WA_ID: Final = re.compile(r"^[0-9]{6,20}$")  # a phone number's digits, as Meta sends `from`
_MAX_ID_CHARS: Final = 512
_MAX_MESSAGE_CHARS: Final = 64 * 1024  # an inbound message's JSON, in its event


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _message_changes(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``value`` of every ``messages`` change; anything else is ignored."""
    return [
        _dict(change.get("value"))
        for entry in _dicts(payload.get("entry"))
        for change in _dicts(entry.get("changes"))
        if change.get("field") == "messages"
    ]


def _text_or_none(value: object, max_chars: int = _MAX_ID_CHARS) -> str | None:
    """A non-empty string Redis can store (valid UTF-8: no lone surrogate), or None."""
    if not isinstance(value, str) or not value or len(value) > max_chars:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


def _timestamp(item: dict[str, Any]) -> float | None:
    """Meta's timestamp of a webhook item, never later than now; None if not a number.

    A clock far ahead, or a forged value, must not outrank every real event (nor open a
    window for ten years).
    """
    try:
        at = float(item.get("timestamp") or 0)
    except (TypeError, ValueError):
        return None
    return min(at, time.time()) if at > 0 else None


def verify_signature(body: bytes, header: str | None, app_secret: str) -> bool:
    """``X-Hub-Signature-256`` against the raw body, in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


@dataclass(slots=True)
class WebhookResult:
    """What one webhook delivery changed."""

    inbound: int = 0
    statuses: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    stale: int = 0
    unknown: int = 0


class WebhookProcessor:
    """Applies a verified webhook payload to windows, conversations, statuses and dead letters."""

    def __init__(
        self,
        redis: Redis,
        *,
        statuses: StatusStore,
        windows: WindowStore,
        conversations: ConversationStore,
        dead_letters: DeadLetterStore,
        pauses: PauseStore,
        opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT_KEYWORDS,
        opt_in_keywords: tuple[str, ...] = DEFAULT_OPT_IN_KEYWORDS,
    ) -> None:
        self.redis = redis
        self.opt_out_keywords = opt_out_keywords
        self.opt_in_keywords = opt_in_keywords
        self.statuses = statuses
        self.windows = windows
        self.conversations = conversations
        self.dead_letters = dead_letters
        self.pauses = pauses

    async def handle(self, payload: dict[str, Any]) -> WebhookResult:
        """Apply every message and status in the payload; ignore fields waq does not use."""
        result = WebhookResult()
        for value in _message_changes(payload):
            phone_number_id = str(_dict(value.get("metadata")).get("phone_number_id", ""))
            if not _ID.match(phone_number_id):
                continue
            names = {
                c.get("wa_id"): _text_or_none(_dict(c.get("profile")).get("name"))
                for c in _dicts(value.get("contacts"))
            }
            # One malformed item is skipped and counted, never the whole delivery: a 5xx
            # would make Meta redeliver it, good items included, until it gives up.
            for message in _dicts(value.get("messages")):
                await self._inbound(
                    phone_number_id, message, names.get(message.get("from")), result
                )
            for status in _dicts(value.get("statuses")):
                await self._status(phone_number_id, status, result)
        return result

    async def forward_raw(self, raw: bytes, payload: dict[str, Any]) -> bool:
        """Add Meta's webhook, byte for byte, to the events, if a subscription wants it.

        Every verified POST is forwarded, Meta's redeliveries too: the subscriber asked for
        what Meta sends. Whether it is forwarded at all is one set read per POST.
        """
        if not await self.redis.scard(keys.WEBHOOK_RAW_WANTED):  # type: ignore[misc]
            return False
        try:
            body = raw.decode()
        except UnicodeDecodeError:
            log.warning("webhook.not_forwarded", reason="the body is not UTF-8")
            return False
        numbers = sorted(
            {
                str(_dict(value.get("metadata")).get("phone_number_id", ""))
                for value in _message_changes(payload)
            }
            - {""}
        )
        data = json.dumps({"phone_number_ids": numbers, "bytes": len(raw)})
        await self.redis.xadd(
            keys.EVENTS, {"type": EventType.META_WEBHOOK.value, "data": data, "body": body}
        )
        return True

    async def _apply_once(
        self, kind: str, item_id: str, apply: Callable[[Pipeline], Awaitable[None]]
    ) -> list[Any] | None:
        """Apply an item's writes and mark it seen, in one transaction; None: seen before.

        Meta redelivers whatever was not answered 2xx. A marker set before the effects would
        make a redelivery after a half-done apply (Redis dropped, the process died) look like
        a duplicate, losing it; here the marker exists only if every effect was applied.
        A concurrent delivery of the same item fails the WATCH and is the duplicate.

        Redis does not roll a transaction back when one of its commands fails (a wrong type,
        a script error): then the marker is taken back and the error raised, so the gateway
        answers 5xx and Meta's redelivery applies the item again.
        """
        marker = keys.webhook_delivery(kind, item_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(marker)
                if await pipe.exists(marker):
                    return None
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                await apply(pipe)
                pipe.set(marker, "1", ex=_DEDUPE_TTL_S)
                answers = list(await pipe.execute(raise_on_error=False))
            except WatchError:
                return None
        if failed := [a for a in answers if isinstance(a, Exception)]:
            await self.redis.delete(marker)
            log.error("webhook.apply_failed", kind=kind, error=str(failed[0]))
            raise failed[0]
        return answers

    async def _inbound(
        self,
        phone_number_id: str,
        message: dict[str, Any],
        profile_name: str | None,
        result: WebhookResult,
    ) -> None:
        wa_id, message_id, at = message.get("from"), message.get("id"), _timestamp(message)
        # Encoded once: checked (valid UTF-8, a sane size) and then published as it is.
        encoded = _text_or_none(json.dumps(message, ensure_ascii=False), _MAX_MESSAGE_CHARS)
        if not (
            isinstance(wa_id, str)
            and _WA_ID.match(wa_id)
            and _text_or_none(message_id)
            and at is not None
            and encoded is not None
        ):
            result.unknown += 1
            log.warning("webhook.malformed", kind="message", id=_text_or_none(message_id))
            return
        conversation_id = await self.conversations.id_for(phone_number_id, wa_id)
        text = _dict(message.get("text")).get("body") or _dict(message.get("button")).get("text")
        keyword = keyword_action(
            text if isinstance(text, str) else None,
            opt_out=self.opt_out_keywords, opt_in=self.opt_in_keywords,
        )  # fmt: skip

        async def apply(pipe: Pipeline) -> None:
            await self.conversations.receive_into(
                pipe, conversation_id, phone_number_id, wa_id,
                at=at, profile_name=profile_name, message_json=encoded, keyword=keyword,
            )  # fmt: skip

        if await self._apply_once("message", str(message_id), apply) is None:
            result.duplicates += 1
            return
        result.inbound += 1
        log.info("webhook.inbound", conversation_id=conversation_id, wa_id=str(wa_id))

    async def _status(
        self, phone_number_id: str, status: dict[str, Any], result: WebhookResult
    ) -> None:
        wamid, state_name = _text_or_none(status.get("id")), _text_or_none(status.get("status"))
        if not wamid or not state_name:
            result.unknown += 1
            log.warning("webhook.malformed", kind="status", id=wamid)
            return
        callback = _text_or_none(status.get("biz_opaque_callback_data"))
        message_id = (
            message_id_of_callback(callback) if callback else None
        ) or await self.statuses.message_id_for_wamid(wamid)
        current = await self.statuses.get(message_id) if message_id else None
        if message_id is None or current is None:
            result.unknown += 1  # not sent by waq, or past retention
            return
        item_id = f"{wamid}:{state_name}"
        if state_name == "failed":
            await self._failed(
                message_id, phone_number_id, status, current, item_id=item_id, result=result
            )
            return
        state = _STATUS_STATES.get(str(state_name))
        if state is None:
            result.unknown += 1
            return
        at = _timestamp(status)

        transitions = self.dead_letters.transitions

        async def apply(pipe: Pipeline) -> None:
            await transitions.record(message_id, state, wamid=wamid, at=at, pipe=pipe)
            if at is not None:  # the number works: older failure reports cannot pause it
                await self.pauses.note_success_into(pipe, phone_number_id, at)

        answers = await self._apply_once("status", item_id, apply)
        if answers is None:
            result.duplicates += 1
            return
        # An unknown outcome reconciled: the conversation's next message may go.
        await transitions.apply_answer(answers[0])
        result.statuses += 1

    async def _failed(
        self,
        message_id: str,
        phone_number_id: str,
        status: dict[str, Any],
        current: MessageStatus,
        *,
        item_id: str,
        result: WebhookResult,
    ) -> None:
        errors = status.get("errors") or [{}]
        error = errors[0]
        code = error.get("code")
        rule = rule_for(int(code) if isinstance(code, int) else 0, http_status=400)
        details = (error.get("error_data") or {}).get("details")
        final_error = {
            "code": code,
            "title": error.get("title"),
            "details": details,
            "http_status": None,
            "source": "status webhook",
            "wamid": status.get("id"),
        }
        hint = rule.hint
        if rule.action is Action.RETRY:
            hint = f"Meta failed it after accepting it: {hint}"
        letter = DeadLetter(
            id=message_id,
            phone_number_id=phone_number_id,
            to=current.to,
            type=current.type,
            request=await self.statuses.request(message_id) or {},
            error=final_error,
            hint=hint,
            suggestion=rule.suggestion,
            attempts=current.history,
            metadata=current.metadata,
            created_at=current.created_at,
            dead_at=time.time(),
        )

        failed_at = _timestamp(status) or time.time()
        pauses = rule.action is Action.PAUSE

        async def apply(pipe: Pipeline) -> None:
            # Forward-only, like every status: a message Meta delivered or that was read is
            # never dead afterwards, and such a stale report pauses nothing.
            if pauses:
                await self.pauses.pause_if_newer_into(
                    pipe, phone_number_id, failed_at=failed_at, reason=rule.hint, code=code,
                    message_id=message_id, stale_if=_DELIVERED,
                )  # fmt: skip
            await self.dead_letters.add(letter, unless=_DELIVERED, pipe=pipe)

        answers = await self._apply_once("status", item_id, apply)
        if answers is None:
            result.duplicates += 1
            return
        paused, answer = (answers[0], answers[1]) if pauses else (None, answers[0])
        added, _ = await self.dead_letters.transitions.apply_answer(answer)
        if paused == 1:
            log.error("alert.number_paused", reason=rule.hint, code=code, source="webhook")
        if not added:
            result.stale += 1
            log.info("webhook.stale_failure", message_id=message_id, code=code, state=current.state)
            return
        result.dead_letters += 1
        log.warning(
            "webhook.failed", message_id=message_id, code=code, suggestion=rule.suggestion.value
        )
