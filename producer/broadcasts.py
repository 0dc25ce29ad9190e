"""Broadcasts: one template to many recipients, each with its own parameters, as bulk traffic.

Each recipient becomes one message (``priority: bulk``) whose idempotency key derives from
the broadcast and the recipient, so an upload retried after a timeout sends nothing twice.
The broadcast's funnel is counted by the transition scripts themselves (a message's record
names its broadcast), so it always matches the messages' states.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, Field, ValidationError, field_validator
from redis.asyncio import Redis

from producer import keys
from producer.client import Producer
from producer.errors import FieldError, InvalidRequest
from producer.recipient import normalize_recipient
from producer.request import SendRequest

__all__ = [
    "FUNNEL",
    "Broadcast",
    "BroadcastProgress",
    "BroadcastSpec",
    "Broadcasts",
    "Recipient",
    "recipients_from_csv",
]

FUNNEL: Final = (
    "queued", "sent", "delivered", "read", "failed", "dead", "cancelled", "opted_out",
)  # fmt: skip
"""The funnel's counters, each a count of messages that reached that step."""

_CHUNK: Final = 500
MAX_RECIPIENTS: Final = 100_000


class Recipient(BaseModel):
    """One recipient and the template's body parameters for them, in order."""

    to: str
    parameters: list[str] = Field(default_factory=list, max_length=20)


class BroadcastSpec(BaseModel):
    """What to send to whom; validated whole before anything is queued."""

    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$")
    template: str = Field(min_length=1, max_length=512, description="An approved template.")
    language: str = Field(default="en_US", min_length=2, max_length=15)
    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    send_at: AwareDatetime | None = None
    name: str = Field(default="", max_length=200)
    share: float | None = Field(
        default=None, gt=0, le=1,
        description="At most this share of the number's limit (None: what interactive "
        "traffic leaves, and at least WAQ_BULK_SHARE).",
    )  # fmt: skip

    @field_validator("recipients")
    @classmethod
    def _distinct(cls, recipients: list[Recipient]) -> list[Recipient]:
        seen: dict[str, int] = {}
        for index, recipient in enumerate(recipients):
            try:
                number = normalize_recipient(recipient.to)
            except ValueError as exc:
                raise ValueError(f"[{index}].to: {exc}") from None
            if number in seen:
                raise ValueError(f"[{index}].to: {number} is also recipient [{seen[number]}]")
            seen[number] = index
            recipient.to = number
        return recipients

    def broadcast_id(self) -> str:
        """``b_`` + a hash of what it sends to whom: the same upload, the same broadcast."""
        digest = hashlib.sha256(
            json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()
        return "b_" + digest[:24]

    def requests(self, broadcast_id: str) -> list[dict[str, Any]]:
        """Each recipient's send request (bulk, keyed by the broadcast and the recipient)."""
        requests = []
        for recipient in self.recipients:
            template: dict[str, Any] = {"name": self.template, "language": {"code": self.language}}
            if recipient.parameters:
                template["components"] = [{
                    "type": "body",
                    "parameters": [{"type": "text", "text": p} for p in recipient.parameters],
                }]  # fmt: skip
            request: dict[str, Any] = {
                "phone_number_id": self.phone_number_id,
                "to": recipient.to,
                "message": {"type": "template", "template": template},
                "idempotency_key": f"{broadcast_id}:{recipient.to}",
                "metadata": {"broadcast_id": broadcast_id},
                "priority": "bulk",
            }
            if self.send_at is not None:
                request["send_at"] = self.send_at.isoformat()
            requests.append(request)
        return requests


class Broadcast(BaseModel):
    """A broadcast as stored."""

    id: str
    phone_number_id: str
    template: str
    language: str
    name: str = ""
    total: int
    created_at: float
    send_at: float | None = None
    share: float | None = None
    state: Literal["active", "paused", "cancelled"] = "active"


class BroadcastProgress(Broadcast):
    """A broadcast and its funnel: how many of its messages reached each step."""

    funnel: dict[str, int]
    done: int
    """Messages that left the queue for good: accepted by Meta, dead or cancelled."""
    finished: bool


def recipients_from_csv(text: str) -> list[Recipient]:
    """Recipients from CSV: a ``to`` column, then one column per body parameter, in order.

    A file with bad rows is refused whole (``InvalidRequest`` names every row and why): a
    broadcast is never half sent.
    """
    reader = csv.reader(io.StringIO(text))
    rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise InvalidRequest([FieldError("csv", "empty", "the file has no rows")])
    header = [cell.strip().lower() for cell in rows[0]]
    if not header or header[0] != "to":
        raise InvalidRequest([FieldError("csv.row 1", "header", "the first column must be 'to'")])
    errors: list[FieldError] = []
    recipients = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            why = f"{len(row)} columns, the header has {len(header)}"
            errors.append(FieldError(f"csv.row {number}", "columns", why))
            continue
        cells = [cell.strip() for cell in row]
        try:
            to = normalize_recipient(cells[0])
        except ValueError as exc:
            errors.append(FieldError(f"csv.row {number}", "phone_number", str(exc)))
            continue
        if missing := [header[i] for i, cell in enumerate(cells[1:], start=1) if not cell]:
            errors.append(FieldError(f"csv.row {number}", "parameter",
                                     f"empty parameter(s): {', '.join(missing)}"))  # fmt: skip
            continue
        recipients.append(Recipient(to=to, parameters=cells[1:]))
    if errors:
        raise InvalidRequest(errors)
    return recipients


class Broadcasts:
    """Creates broadcasts through a producer and reads, pauses, resumes and cancels them."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.redis: Redis = producer.redis

    async def create(self, spec: BroadcastSpec) -> tuple[BroadcastProgress, bool]:
        """Queue every recipient's message; (the broadcast, whether this call created it).

        Validated whole first (the template against the catalog once, for all). A repeat
        of the same spec is the same broadcast and queues nothing new.
        """
        broadcast_id = spec.broadcast_id()
        requests = spec.requests(broadcast_id)
        if requests:
            await self.producer.check_templates(_validated([requests[0]]))
        send_at = spec.send_at.timestamp() if spec.send_at else None
        broadcast = Broadcast(
            id=broadcast_id, phone_number_id=spec.phone_number_id, template=spec.template,
            language=spec.language, name=spec.name, total=len(requests),
            created_at=time.time(), send_at=send_at, share=spec.share,
        )  # fmt: skip
        key = keys.broadcast(broadcast_id)
        created = bool(await self.redis.hsetnx(key, "spec", broadcast.model_dump_json()))  # type: ignore[misc]
        # Recipients on the sender's opt-out list are counted, not sent (and count as done).
        async with self.redis.pipeline(transaction=False) as pipe:
            for request in requests:
                pipe.sismember(keys.opt_outs(spec.phone_number_id), request["to"].lstrip("+"))
            opted = await pipe.execute()
        requests = [r for r, out in zip(requests, opted, strict=True) if not out]
        if created:
            skipped = sum(1 for out in opted if out)
            counters = {"total": str(len(opted)), "opted_out": str(skipped), "done": str(skipped)}
            if spec.share is not None:  # the claim spaces its messages by it
                counters["share"] = repr(spec.share)
            await self.redis.hset(key, mapping=counters)  # type: ignore[misc]
            await self.redis.zadd(keys.BROADCASTS, {broadcast_id: broadcast.created_at})
            data = {
                "broadcast_id": broadcast_id, "phone_number_id": spec.phone_number_id,
                "template": spec.template, "total": len(opted), "opted_out": skipped,
                "send_at": send_at,
            }  # fmt: skip
            await self.redis.xadd(
                keys.EVENTS, {"type": "broadcast.started", "data": json.dumps(data)}
            )
            if not requests:  # every recipient opted out: done already
                finished = {"broadcast_id": broadcast_id, "total": len(opted), "sent": 0}
                await self.redis.xadd(
                    keys.EVENTS, {"type": "broadcast.finished", "data": json.dumps(finished)}
                )
        for start in range(0, len(requests), _CHUNK):
            queued = await self.producer.enqueue_many(  # both checked above, once for all
                requests[start : start + _CHUNK], check_templates=False, check_opt_outs=False
            )
            await self.redis.sadd(  # type: ignore[misc]
                keys.broadcast_messages(broadcast_id), *(q.message_id for q in queued)
            )
        stored = await self.get(broadcast_id)
        assert stored is not None
        return stored, created

    async def get(self, broadcast_id: str) -> BroadcastProgress | None:
        """The broadcast and its funnel, or None."""
        raw = await self.redis.hgetall(keys.broadcast(broadcast_id))  # type: ignore[misc]
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        broadcast = Broadcast.model_validate_json(fields["spec"])
        if "state" in fields:
            broadcast.state = fields["state"]  # type: ignore[assignment]
        funnel = {step: int(fields.get(step, 0)) for step in FUNNEL}
        done = int(fields.get("done", 0))
        return BroadcastProgress(
            **broadcast.model_dump(), funnel=funnel, done=done,
            finished=done >= broadcast.total,
        )  # fmt: skip

    async def recent(self, limit: int = 20) -> list[BroadcastProgress]:
        """The newest broadcasts, newest first."""
        ids = await self.redis.zrevrange(keys.BROADCASTS, 0, limit - 1)
        found = [await self.get(_text(i)) for i in ids]
        return [b for b in found if b is not None]

    async def pause(self, broadcast_id: str) -> bool:
        """Hold its messages not yet sent (they wait in the lane); False if unknown."""
        return await self._set_state(broadcast_id, "paused")

    async def resume(self, broadcast_id: str) -> bool:
        """Let its messages go again."""
        return await self._set_state(broadcast_id, "active")

    async def cancel(self, broadcast_id: str) -> int | None:
        """Cancel every message of it not yet handed to Meta; how many (None: unknown)."""
        found = await self.get(broadcast_id)
        if found is None:
            return None
        await self._set_state(broadcast_id, "cancelled")
        cancelled = 0
        async for message_id in self.redis.sscan_iter(keys.broadcast_messages(broadcast_id)):
            result = await self.producer.cancel(_text(message_id))
            cancelled += int(result.cancelled)
        return cancelled

    async def _set_state(self, broadcast_id: str, state: str) -> bool:
        if not await self.redis.exists(keys.broadcast(broadcast_id)):
            return False
        await self.redis.hset(keys.broadcast(broadcast_id), "state", state)  # type: ignore[misc]
        return True


def _validated(requests: list[dict[str, Any]]) -> list[SendRequest]:
    try:
        return [SendRequest.model_validate(r) for r in requests]
    except ValidationError as exc:
        raise InvalidRequest.from_validation_error(exc) from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
