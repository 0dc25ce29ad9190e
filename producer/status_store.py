"""Status records in Redis, read: a hash per message for its state, a list for its history.

Only ``producer.transitions`` writes them (and moves a state only forward, because Meta's
statuses arrive late, twice and out of order); this module builds a new record's fields and
reads records back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from producer.request import SendRequest
from producer.status import MessageState, MessageStatus, StatusEvent

__all__ = ["StatusStore"]


class StatusStore:
    """Reads message status records; they expire after ``retention_s``."""

    def __init__(self, redis: Redis, *, retention_s: int) -> None:
        self.redis = redis
        self.retention_s = retention_s

    def new_record(
        self, request: SendRequest, payload: dict[str, Any] | str
    ) -> tuple[dict[str, str], str]:
        """The hash fields and first history event of a message about to be queued.

        The request itself is kept (``payload``: its JSON form, or that JSON already encoded),
        so a failure Meta reports later by webhook can still be dead-lettered with the
        request that caused it.
        """
        now = time.time()
        # Defaults are left out (attempts 0, updated_at = created_at, no metadata): a queued
        # message is mostly this hash, and each field costs ~60 bytes of Redis memory.
        fields = {
            "state": MessageState.QUEUED.value,
            "phone_number_id": request.phone_number_id,
            "to": request.to,
            "type": request.message.type,
            "created_at": repr(now),
            "request": payload if isinstance(payload, str) else orjson.dumps(payload).decode(),
        }
        if request.metadata:
            fields["metadata"] = json.dumps(request.metadata)
        if request.biz_opaque_callback_data is not None:  # for its events, without the request
            fields["callback"] = request.biz_opaque_callback_data
        state = MessageState.QUEUED
        if (send_at := request.send_at_s) is not None:
            state = MessageState.SCHEDULED
            fields["state"], fields["send_at"] = state.value, repr(send_at)
        if request.priority == "bulk":
            fields["priority"] = "bulk"
        if broadcast := request.metadata.get("broadcast_id"):  # its funnel counts this message
            fields["broadcast"] = broadcast
        event = StatusEvent(at=now, state=state).model_dump_json(exclude_none=True)
        return fields, event

    async def message_id_for_wamid(self, wamid: str) -> str | None:
        """The waq message behind a wamid, if waq sent it within the retention."""
        raw = await self.redis.get(keys.wamid(wamid))
        return _text(raw) if raw is not None else None

    async def request(self, message_id: str) -> dict[str, Any] | None:
        """The send request as enqueued (JSON form), while the record lives."""
        raw = await self.redis.hget(keys.message(message_id), "request")  # type: ignore[misc]
        return json.loads(raw) if raw is not None else None

    async def get(self, message_id: str) -> MessageStatus | None:
        """The message's state and history, or None if unknown or expired."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.read_into(pipe, message_id)
            raw, history = await pipe.execute()
        return self.parse(message_id, raw, history)

    def read_into(self, pipe: Pipeline, message_id: str) -> None:
        """Queue the two reads ``get`` makes on a caller's pipeline (answers: ``parse``)."""
        pipe.hgetall(keys.message(message_id))
        pipe.lrange(keys.message_history(message_id), 0, -1)

    @staticmethod
    def parse(
        message_id: str, raw: dict[bytes, bytes], history: list[bytes]
    ) -> MessageStatus | None:
        """The status from the answers to ``read_into``'s two reads."""
        fields = {_text(k): _text(v) for k, v in raw.items()}
        if "state" not in fields:
            return None
        return MessageStatus(
            id=message_id,
            state=MessageState(fields["state"]),
            phone_number_id=fields.get("phone_number_id", ""),
            to=fields.get("to", ""),
            type=fields.get("type", ""),
            conversation_id=fields.get("conversation_id"),
            attempts=int(fields.get("attempts", 0)),
            wamid=fields.get("wamid"),
            next_attempt_at=float(fields["next_attempt_at"])
            if "next_attempt_at" in fields
            else None,
            detail=fields.get("detail"),
            error=json.loads(fields["error"]) if "error" in fields else None,
            created_at=float(fields.get("created_at", 0)),
            updated_at=float(fields.get("updated_at") or fields.get("created_at") or 0),
            metadata=json.loads(fields.get("metadata", "{}")),
            send_at=float(fields["send_at"]) if "send_at" in fields else None,
            biz_opaque_callback_data=_callers_callback(fields.get("request")),
            history=[StatusEvent.model_validate_json(item) for item in history],
        )


def _callers_callback(request: str | None) -> str | None:
    """The caller's ``biz_opaque_callback_data`` from the stored request, if it gave one."""
    if request is None or "biz_opaque_callback_data" not in request:
        return None  # the common case, without parsing the request
    value = json.loads(request).get("biz_opaque_callback_data")
    return str(value) if value is not None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
