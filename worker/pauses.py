"""Paused business numbers: sending stops for a number whose token, account or number is broken."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from producer.transition_scripts import EMIT

__all__ = ["Pause", "PauseStore"]


@dataclass(frozen=True, slots=True)
class Pause:
    """Why a number is paused, and since when."""

    reason: str
    code: int | None
    since: float
    by: str = "worker"


# A number paused: its event, with the pause's own fields. ARGV[1] the number, ARGV[3] the
# pause JSON.
_PAUSED: Final = """
local function paused(number, raw)
  local p = cjson.decode(raw)
  emit('number.paused', {phone_number_id = number, reason = p.reason, code = p.code, by = p.by})
end
"""

# KEYS: paused hash. ARGV: phone_number_id, (unused), pause JSON. Returns 1 paused, 0 already.
_PAUSE: Final = (
    EMIT
    + _PAUSED
    + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then return 0 end
paused(ARGV[1], ARGV[3])
return 1
"""
)

# KEYS: paused hash. ARGV: phone_number_id, who resumed it. Returns 1 resumed, 0 not paused.
_RESUME: Final = (
    EMIT
    + """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
emit('number.resumed', {phone_number_id = ARGV[1], by = ARGV[2]})
return 1
"""
)

# KEYS: paused hash, last-success hash, the failed message's status hash.
# ARGV: phone_number_id, failure time, pause JSON, the message's states that make it stale.
# Returns 1 paused, 0 already paused, -1 refused: the number sent successfully since, or
# the failed message itself was delivered.
_PAUSE_IF_NEWER: Final = (
    EMIT
    + _PAUSED
    + """
local ok = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) < ok then return -1 end
local state = redis.call('HGET', KEYS[3], 'state')
if state and string.find(ARGV[4], ',' .. state .. ',', 1, true) then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then return 0 end
paused(ARGV[1], ARGV[3])
return 1
"""
)

# KEYS: last-success hash. ARGV: phone_number_id, time. Moves forward only.
_NOTE_SUCCESS: Final = """
local ok = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > ok then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


class PauseStore:
    """One hash of paused numbers, shared by every worker and operator."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pause = redis.register_script(_PAUSE)
        self._resume = redis.register_script(_RESUME)
        self._pause_if_newer = redis.register_script(_PAUSE_IF_NEWER)
        self._note_success = redis.register_script(_NOTE_SUCCESS)

    async def pause(
        self, phone_number_id: str, *, reason: str, code: int | None, by: str = "worker"
    ) -> bool:
        """Pause a number; False if it was already paused (the first reason is kept)."""
        value = self._value(reason=reason, code=code, by=by)
        return bool(
            await self._pause(keys=[keys.PAUSED_NUMBERS], args=[phone_number_id, "", value])
        )

    def pause_if_newer_into(
        self,
        pipe: Pipeline,
        phone_number_id: str,
        *,
        failed_at: float,
        reason: str,
        code: int | None,
        message_id: str,
        stale_if: Iterable[str],
    ) -> Awaitable[Any]:
        """Queue a pause unless the report is stale.

        Stale: the failure predates the number's newest success, or the failed message is in
        a ``stale_if`` state (Meta delivered it after all). Meta reports failures late (a
        webhook retried for days, a replay), and an old one says nothing about the number
        now. Its answer: 1 paused, 0 already paused, -1 stale.
        """
        return self._pause_if_newer(
            keys=[keys.PAUSED_NUMBERS, keys.SENDER_LAST_SUCCESS, keys.message(message_id)],
            args=[
                phone_number_id,
                failed_at,
                self._value(reason=reason, code=code, by="worker"),
                "," + "".join(f"{state}," for state in stale_if),
            ],
            client=pipe,
        )

    def note_success_into(self, pipe: Pipeline, phone_number_id: str, at: float) -> Awaitable[Any]:
        """Queue: Meta reported a message of this number sent, delivered or read at ``at``."""
        return self._note_success(
            keys=[keys.SENDER_LAST_SUCCESS], args=[phone_number_id, at], client=pipe
        )

    @staticmethod
    def _value(*, reason: str, code: int | None, by: str) -> str:
        return json.dumps(asdict(Pause(reason=reason, code=code, since=time.time(), by=by)))

    async def resume(self, phone_number_id: str, *, by: str = "operator") -> bool:
        """Resume a number; False if it was not paused. ``by``: who, for its event."""
        return bool(await self._resume(keys=[keys.PAUSED_NUMBERS], args=[phone_number_id, by]))

    async def get(self, phone_number_id: str) -> Pause | None:
        """The pause of one number, if any."""
        return self.parse(await self.redis.hget(keys.PAUSED_NUMBERS, phone_number_id))  # type: ignore[misc]

    @staticmethod
    def read_into(pipe: Pipeline, phone_number_id: str) -> None:
        """Queue ``get``'s read on a caller's pipeline (its answer: ``parse``)."""
        pipe.hget(keys.PAUSED_NUMBERS, phone_number_id)

    @staticmethod
    def parse(raw: bytes | None) -> Pause | None:
        """The pause from the hash's field, if any."""
        return Pause(**json.loads(raw)) if raw is not None else None

    async def all(self) -> dict[str, Pause]:
        """Every paused number."""
        raw = await self.redis.hgetall(keys.PAUSED_NUMBERS)  # type: ignore[misc]
        return {
            (k.decode() if isinstance(k, bytes) else k): Pause(**json.loads(v))
            for k, v in raw.items()
        }
