"""The 24-hour customer service window, per (business number, customer), in Redis."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from producer.transition_scripts import RECORD_WINDOW

__all__ = ["WINDOW_S", "WindowStore"]

WINDOW_S: Final = 24 * 3600


class WindowStore:
    """When each customer last wrote in; open means less than 24 h ago, minus a margin."""

    def __init__(self, redis: Redis, *, margin_s: float = 60.0) -> None:
        self.redis = redis
        self.margin_s = margin_s
        self._record = redis.register_script(RECORD_WINDOW)

    async def record_inbound(self, phone_number_id: str, wa_id: str, at: float) -> bool:
        """Open or extend the window from an inbound message's own timestamp."""
        return bool(await self.record_inbound_into(None, phone_number_id, wa_id, at))

    def record_inbound_into(
        self, pipe: Pipeline | None, phone_number_id: str, wa_id: str, at: float
    ) -> Awaitable[Any]:
        """``record_inbound`` on a caller's pipeline (only queued there; answer > 0: moved).

        Only the window: a customer's message from Meta's webhook goes through
        ``ConversationStore.receive_into``, which also emits its events.
        """
        return self._record(
            keys=[keys.window(phone_number_id, wa_id)],
            args=[at, WINDOW_S, phone_number_id, wa_id],
            client=pipe,
        )

    async def last_inbound(self, phone_number_id: str, wa_id: str) -> float | None:
        """The customer's last inbound time, or None when the window has expired."""
        raw = await self.redis.get(keys.window(phone_number_id, wa_id))
        return float(raw) if raw is not None else None

    async def recent(self, phone_number_id: str, limit: int = 10) -> list[tuple[str, float]]:
        """The customers who wrote to this number last, newest first, with when (E.164, s).

        Only those whose window is still open: the index keeps writers for a window.
        """
        now = time.time()
        rows = await self.redis.zrevrangebyscore(
            keys.recent_customers(phone_number_id), "+inf", now - WINDOW_S + self.margin_s,
            start=0, num=limit, withscores=True,
        )  # fmt: skip
        return [("+" + (w.decode() if isinstance(w, bytes) else w), float(at)) for w, at in rows]

    async def is_open(self, phone_number_id: str, wa_id: str, *, now: float | None = None) -> bool:
        """True while a free-form message may still be sent, read at send time."""
        return self.open_at(await self.last_inbound(phone_number_id, wa_id), now=now)

    async def are_open(self, pairs: Iterable[tuple[str, str]]) -> list[bool]:
        """``is_open`` for many (phone_number_id, wa_id) pairs, in one round trip."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for phone_number_id, wa_id in pairs:
                self.read_into(pipe, phone_number_id, wa_id)
            return [self.open_at(last, now=now) for last in await pipe.execute()]

    @staticmethod
    def read_into(pipe: Pipeline, phone_number_id: str, wa_id: str) -> None:
        """Queue the window's read on a caller's pipeline (its answer: ``open_at``)."""
        pipe.get(keys.window(phone_number_id, wa_id))

    def open_at(self, last: bytes | float | None, *, now: float | None = None) -> bool:
        """Whether a window whose last inbound was ``last`` is open at ``now``."""
        return last is not None and (now or time.time()) - float(last) < WINDOW_S - self.margin_s
