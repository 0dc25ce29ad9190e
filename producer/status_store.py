"""Status records in Redis: a hash per message for its state, a list for its history.

The producer creates a record when it enqueues; workers and webhooks move it along. Every
transition is one script call: it moves the state only forward (``STATE_RANK``), because
Meta's statuses arrive late, twice and out of order, and a late ``accepted`` from a worker
must not undo a ``delivered`` that overtook it.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from producer.request import SendRequest
from producer.status import STATE_RANK, MessageState, MessageStatus, StatusEvent

__all__ = ["StatusStore"]

_RANKS_LUA = "{" + ", ".join(f"{state.value}={rank}" for state, rank in STATE_RANK.items()) + "}"

# KEYS: hash, history, wamid index. ARGV: state, event, retention s, message id,
# fields set always (JSON), fields set only when the state moves (JSON), fields to clear then.
# Returns 1 moved, 0 kept (a later state is already recorded), -1 no record.
_RECORD: Final = f"""
local ranks = {_RANKS_LUA}
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return -1 end
local new, old = ranks[ARGV[1]], ranks[current]
local moves = new >= old or (new <= 1 and old <= 1)
for field, value in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[1], field, value) end
if moves then
  redis.call('HSET', KEYS[1], 'state', ARGV[1])
  for field, value in pairs(cjson.decode(ARGV[6])) do redis.call('HSET', KEYS[1], field, value) end
  for field in string.gmatch(ARGV[7], '[^,]+') do redis.call('HDEL', KEYS[1], field) end
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if KEYS[3] ~= KEYS[1] then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3]) end
if moves then return 1 end
return 0
"""


class StatusStore:
    """Reads and writes message status records; they expire after ``retention_s``."""

    def __init__(self, redis: Redis, *, retention_s: int) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self._record = redis.register_script(_RECORD)

    def new_record(
        self, request: SendRequest, payload: dict[str, Any]
    ) -> tuple[dict[str, str], str]:
        """The hash fields and first history event of a message about to be queued.

        The request itself is kept (``payload``, its JSON form), so a failure Meta reports
        later by webhook can still be dead-lettered with the request that caused it.
        """
        now = time.time()
        fields = {
            "state": MessageState.QUEUED.value,
            "phone_number_id": request.phone_number_id,
            "to": request.to,
            "type": request.message.type,
            "attempts": "0",
            "created_at": repr(now),
            "updated_at": repr(now),
            "metadata": json.dumps(request.metadata),
            "request": json.dumps(payload, separators=(",", ":")),
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
        at: float | None = None,
        pipe: Pipeline | None = None,
    ) -> bool:
        """Move a message to ``state`` (unless a later state is already recorded); log the step.

        Returns whether the state moved. On a caller's ``pipe`` the step is only queued (and
        the answer, 1 moved / 0 kept, comes from the pipeline): one round trip for several.
        """
        now = time.time()
        always: dict[str, str] = {}
        if count_attempt:
            always["attempts"] = str(attempt)
        if wamid is not None:
            always["wamid"] = wamid
        moved: dict[str, str] = {"updated_at": repr(now)}
        cleared = [name for name, value in (("detail", detail), ("error", error)) if value is None]
        if detail is not None:
            moved["detail"] = detail
        if error is not None:
            moved["error"] = json.dumps(error)
        if next_attempt_at is not None:
            moved["next_attempt_at"] = repr(next_attempt_at)
        else:
            cleared.append("next_attempt_at")
        event = StatusEvent(at=at or now, state=state, attempt=attempt, detail=detail, error=error)
        key = keys.message(message_id)
        result = await self._record(
            keys=[key, keys.message_history(message_id), keys.wamid(wamid) if wamid else key],
            args=[
                state.value,
                event.model_dump_json(exclude_none=True),
                self.retention_s,
                message_id,
                json.dumps(always),
                json.dumps(moved),
                ",".join(cleared),
            ],
            client=pipe,
        )
        return bool(result == 1)

    async def count_job_error(self, message_id: str) -> int:
        """One more crash of the message's send job; returns the count."""
        return int(await self.redis.hincrby(keys.message(message_id), "job_errors", 1))  # type: ignore[misc]

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
            attempts=int(fields.get("attempts", 0)),
            job_errors=int(fields.get("job_errors", 0)),
            wamid=fields.get("wamid"),
            next_attempt_at=float(fields["next_attempt_at"])
            if "next_attempt_at" in fields
            else None,
            detail=fields.get("detail"),
            error=json.loads(fields["error"]) if "error" in fields else None,
            created_at=float(fields.get("created_at", 0)),
            updated_at=float(fields.get("updated_at", 0)),
            metadata=json.loads(fields.get("metadata", "{}")),
            history=[StatusEvent.model_validate_json(item) for item in history],
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
