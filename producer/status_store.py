"""Status records in Redis: a hash per message for its state, a list for its history.

The producer creates a record when it enqueues; workers (and later the webhooks) move it
along. Each transition is one MULTI round trip: the hash fields, one history event, TTLs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis

from producer import keys
from producer.status import MessageState, MessageStatus, StatusEvent

__all__ = ["StatusStore"]


class StatusStore:
    """Reads and writes message status records; they expire after ``retention_s``."""

    def __init__(self, redis: Redis, *, retention_s: int) -> None:
        self.redis = redis
        self.retention_s = retention_s

    def new_record(
        self, message_id: str, *, phone_number_id: str, to: str, kind: str, metadata: dict[str, str]
    ) -> tuple[dict[str, str], str]:
        """The hash fields and first history event of a message about to be queued."""
        now = time.time()
        fields = {
            "state": MessageState.QUEUED.value,
            "phone_number_id": phone_number_id,
            "to": to,
            "type": kind,
            "attempts": "0",
            "created_at": repr(now),
            "updated_at": repr(now),
            "metadata": json.dumps(metadata),
        }
        event = StatusEvent(at=now, state=MessageState.QUEUED).model_dump_json(exclude_none=True)
        return fields, event

    async def record(
        self,
        message_id: str,
        state: MessageState,
        *,
        attempt: int = 0,
        detail: str | None = None,
        error: dict[str, Any] | None = None,
        wamid: str | None = None,
        next_attempt_at: float | None = None,
        count_attempt: bool = False,
    ) -> None:
        """Move a message to ``state`` and append the step to its history."""
        now = time.time()
        fields: dict[str, str] = {"state": state.value, "updated_at": repr(now)}
        if count_attempt:
            fields["attempts"] = str(attempt)
        if detail is not None:
            fields["detail"] = detail
        if error is not None:
            fields["error"] = json.dumps(error)
        if wamid is not None:
            fields["wamid"] = wamid
        if next_attempt_at is not None:
            fields["next_attempt_at"] = repr(next_attempt_at)
        event = StatusEvent(at=now, state=state, attempt=attempt, detail=detail, error=error)
        key, history = keys.message(message_id), keys.message_history(message_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            if next_attempt_at is None:
                pipe.hdel(key, "next_attempt_at")
            if detail is None:
                pipe.hdel(key, "detail")
            pipe.rpush(history, event.model_dump_json(exclude_none=True))
            pipe.expire(key, self.retention_s)
            pipe.expire(history, self.retention_s)
            if wamid is not None:
                pipe.set(keys.wamid(wamid), message_id, ex=self.retention_s)
            await pipe.execute()

    async def get(self, message_id: str) -> MessageStatus | None:
        """The message's state and history, or None if unknown or expired."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.message(message_id))
            pipe.lrange(keys.message_history(message_id), 0, -1)
            raw, history = await pipe.execute()
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return MessageStatus(
            id=message_id,
            state=MessageState(fields["state"]),
            phone_number_id=fields["phone_number_id"],
            to=fields["to"],
            type=fields["type"],
            attempts=int(fields.get("attempts", 0)),
            wamid=fields.get("wamid"),
            next_attempt_at=float(fields["next_attempt_at"])
            if "next_attempt_at" in fields
            else None,
            detail=fields.get("detail"),
            error=json.loads(fields["error"]) if "error" in fields else None,
            created_at=float(fields["created_at"]),
            updated_at=float(fields["updated_at"]),
            metadata=json.loads(fields.get("metadata", "{}")),
            history=[StatusEvent.model_validate_json(item) for item in history],
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
