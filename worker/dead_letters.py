"""The dead-letter queue: every message waq will not send, with why and what to do about it.

An entry and the message's ``dead`` status are written in one MULTI, so a message is never
dead without an entry, nor an entry left beside a live message.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from producer import keys
from producer.status import MessageState, MessageStatus, StatusEvent
from producer.status_store import StatusStore
from worker.error_table import Suggestion

__all__ = ["DeadLetter", "DeadLetterStore"]


class DeadLetter(BaseModel):
    """One undeliverable message: the request as sent, every attempt, the final error, a hint."""

    model_config = ConfigDict(frozen=True)

    id: str
    phone_number_id: str
    to: str
    type: str
    request: dict[str, Any]
    error: dict[str, Any]
    hint: str
    suggestion: Suggestion
    attempts: list[StatusEvent]
    metadata: dict[str, str] = {}
    created_at: float
    dead_at: float

    @classmethod
    def of(
        cls,
        message_id: str,
        *,
        raw_request: dict[str, Any],
        status: MessageStatus | None,
        error: dict[str, Any],
        suggestion: Suggestion,
        hint: str,
        failed_attempt: int | None = None,
    ) -> DeadLetter:
        """The entry for a message, from its request and status.

        ``failed_attempt`` is the call to Meta that just failed, not yet in the history.
        """
        now = time.time()
        attempts = list(status.history) if status else []
        if failed_attempt is not None:
            attempts.append(
                StatusEvent(at=now, state=MessageState.SENDING, attempt=failed_attempt,
                            detail="attempt failed", error=error)
            )  # fmt: skip
        message = raw_request.get("message")
        return cls(
            id=message_id,
            phone_number_id=str(
                raw_request.get("phone_number_id") or (status.phone_number_id if status else "")
            ),
            to=str(status.to if status else raw_request.get("to", "")),
            type=status.type
            if status
            else str(message.get("type", "") if isinstance(message, dict) else ""),
            request=raw_request,
            error=error,
            hint=hint,
            suggestion=suggestion,
            attempts=attempts,
            metadata=status.metadata if status else {},
            created_at=status.created_at if status else now,
            dead_at=now,
        )

    @property
    def code(self) -> Any:
        """The final error's code (Meta's number, or waq's name for its own refusals)."""
        return self.error.get("code")


class DeadLetterStore:
    """Writes and reads dead letters; ``waq dlq`` and the console read the same store."""

    def __init__(self, redis: Redis, statuses: StatusStore) -> None:
        self.redis = redis
        self.statuses = statuses

    async def add(self, letter: DeadLetter, *, attempts: int | None = None) -> None:
        """Store the entry and mark the message dead, atomically (with its attempt count)."""
        now = time.time()
        counted = {"attempts": str(attempts)} if attempts is not None else {}
        event = StatusEvent(at=now, state=MessageState.DEAD, detail=letter.hint, error=letter.error)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.dead_letter(letter.id), letter.model_dump_json())
            pipe.zadd(keys.DEAD_LETTERS, {letter.id: letter.dead_at})
            pipe.hset(
                keys.message(letter.id),
                mapping={
                    "state": MessageState.DEAD.value,
                    "updated_at": repr(now),
                    "detail": letter.hint,
                    "error": json.dumps(letter.error),
                    **counted,
                },
            )
            pipe.hdel(keys.message(letter.id), "next_attempt_at")
            pipe.rpush(keys.message_history(letter.id), event.model_dump_json(exclude_none=True))
            pipe.expire(keys.message(letter.id), self.statuses.retention_s)
            pipe.expire(keys.message_history(letter.id), self.statuses.retention_s)
            await pipe.execute()

    async def get(self, message_id: str) -> DeadLetter | None:
        """One entry, or None."""
        raw = await self.redis.get(keys.dead_letter(message_id))
        return DeadLetter.model_validate_json(raw) if raw is not None else None

    async def list(
        self,
        *,
        limit: int = 50,
        code: str | None = None,
        suggestion: str | None = None,
        phone_number_id: str | None = None,
    ) -> list[DeadLetter]:
        """Newest first, filtered by error code, suggestion or sender."""
        ids = await self.redis.zrevrange(keys.DEAD_LETTERS, 0, -1)
        found: list[DeadLetter] = []
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            for raw in await self.redis.mget([keys.dead_letter(_text(i)) for i in chunk]):
                if raw is None:
                    continue
                letter = DeadLetter.model_validate_json(raw)
                if (
                    (code is None or str(letter.code) == code)
                    and (suggestion is None or letter.suggestion == suggestion)
                    and (phone_number_id is None or letter.phone_number_id == phone_number_id)
                ):
                    found.append(letter)
                    if len(found) >= limit:
                        return found
        return found

    async def count(self) -> int:
        """How many entries wait for an operator."""
        return int(await self.redis.zcard(keys.DEAD_LETTERS))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
