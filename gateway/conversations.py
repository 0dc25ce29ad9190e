"""Conversations: a (business number, customer) pair, created by the customer's first message.

Its id (``producer.conversation_ids``) derives from the two numbers under a deployment key;
services find one with ``GET /v1/conversations?customer=...``.
"""

from __future__ import annotations

import time

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from producer.conversation_ids import ConversationIds, conversation_id_for
from producer.transition_scripts import INBOUND
from worker.windows import WINDOW_S, WindowStore

__all__ = ["Conversation", "ConversationStore", "conversation_id_for"]


class Window(BaseModel):
    """The customer service window as of now."""

    open: bool
    last_inbound_at: float | None
    closes_at: float | None


class Conversation(BaseModel):
    """A conversation and its window."""

    id: str
    phone_number_id: str
    wa_id: str
    customer: str
    profile_name: str | None = None
    created_at: float
    window: Window


class ConversationStore:
    """Creates conversations on inbound messages and reads them with their windows."""

    def __init__(
        self,
        redis: Redis,
        windows: WindowStore,
        *,
        key: str | None = None,
        retention_s: int = 30 * 24 * 3600,
    ) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.windows = windows
        self.ids = ConversationIds(redis, key=key)
        self._receive = redis.register_script(INBOUND)

    async def id_for(self, phone_number_id: str, wa_id: str) -> str:
        """The conversation id of two numbers, in this deployment."""
        return await self.ids.id_for(phone_number_id, wa_id)

    async def receive_into(
        self,
        pipe: Pipeline,
        conversation_id: str,
        phone_number_id: str,
        wa_id: str,
        *,
        at: float,
        profile_name: str | None,
        message_json: str,
        keyword: tuple[str | None, str] = (None, ""),
    ) -> None:
        """Queue a customer's message: its window, its conversation, and their events.

        ``keyword``: ("out" or "in", the word) when the message is an opt-out or opt-in keyword.
        """
        await self._receive(
            keys=[keys.window(phone_number_id, wa_id), keys.WINDOWS_CLOSING,
                  keys.conversation(conversation_id)],
            args=[at, WINDOW_S, conversation_id, phone_number_id, wa_id, profile_name or "",
                  message_json, repr(time.time()), keyword[0] or "", keyword[1],
                  self.retention_s],
            client=pipe,
        )  # fmt: skip

    async def get(self, conversation_id: str) -> Conversation | None:
        """A conversation with its window, or None if the customer never wrote in."""
        raw = await self.redis.hgetall(keys.conversation(conversation_id))  # type: ignore[misc]
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        phone_number_id, wa_id = fields["phone_number_id"], fields["wa_id"]
        last = await self.windows.last_inbound(phone_number_id, wa_id)
        closes_at = last + WINDOW_S if last is not None else None
        is_open = await self.windows.is_open(phone_number_id, wa_id) if last is not None else False
        return Conversation(
            id=conversation_id,
            phone_number_id=phone_number_id,
            wa_id=wa_id,
            customer="+" + wa_id,
            profile_name=fields.get("profile_name"),
            created_at=float(fields.get("created_at", 0)),
            window=Window(open=is_open, last_inbound_at=last, closes_at=closes_at),
        )

    async def find(self, phone_number_id: str, wa_id: str) -> Conversation | None:
        """The conversation between two numbers, if the customer ever wrote in."""
        return await self.get(await self.id_for(phone_number_id, wa_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
