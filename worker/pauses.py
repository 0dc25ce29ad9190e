"""Paused business numbers: sending stops for a number whose token, account or number is broken."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys

__all__ = ["Pause", "PauseStore"]


@dataclass(frozen=True, slots=True)
class Pause:
    """Why a number is paused, and since when."""

    reason: str
    code: int | None
    since: float
    by: str = "worker"


class PauseStore:
    """One hash of paused numbers, shared by every worker and operator."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def pause(
        self, phone_number_id: str, *, reason: str, code: int | None, by: str = "worker"
    ) -> bool:
        """Pause a number; False if it was already paused (the first reason is kept)."""
        value = self._value(reason=reason, code=code, by=by)
        return bool(await self.redis.hsetnx(keys.PAUSED_NUMBERS, phone_number_id, value))  # type: ignore[misc]

    @classmethod
    def pause_into(
        cls, pipe: Pipeline, phone_number_id: str, *, reason: str, code: int | None, by: str
    ) -> None:
        """Queue ``pause`` on a caller's pipeline (its answer: 1 when it was not paused)."""
        pipe.hsetnx(
            keys.PAUSED_NUMBERS, phone_number_id, cls._value(reason=reason, code=code, by=by)
        )

    @staticmethod
    def _value(*, reason: str, code: int | None, by: str) -> str:
        return json.dumps(asdict(Pause(reason=reason, code=code, since=time.time(), by=by)))

    async def resume(self, phone_number_id: str) -> bool:
        """Resume a number; False if it was not paused."""
        return bool(await self.redis.hdel(keys.PAUSED_NUMBERS, phone_number_id))  # type: ignore[misc]

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
