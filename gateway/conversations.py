"""Conversations: a (business number, customer) pair, created by the customer's first message.

The id derives from the two numbers, keyed with a deployment secret: finding a conversation
by its numbers needs no index, and an id seen in a log, a URL or a ticket does not give the
customer's number away (an unkeyed hash of a phone number is reversed by brute force in
milliseconds). Services find an id with ``GET /v1/conversations?customer=...``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any, Final

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from worker.windows import WINDOW_S, WindowStore

__all__ = ["Conversation", "ConversationStore", "conversation_id_for"]

_KEY: Final = "waq:conversation_key"
"""string, the deployment's conversation-id key when WAQ_CONVERSATION_KEY is unset; no TTL."""


def conversation_id_for(phone_number_id: str, wa_id: str, *, key: bytes) -> str:
    """``c_`` + 24 hex digits of HMAC-SHA-256 over the two numbers, with the deployment's key."""
    digest = hmac.new(key, f"{phone_number_id}:{wa_id}".encode(), hashlib.sha256).hexdigest()
    return "c_" + digest[:24]


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

    def __init__(self, redis: Redis, windows: WindowStore, *, key: str | None = None) -> None:
        self.redis = redis
        self.windows = windows
        self._key = key.encode() if key else None

    async def key(self) -> bytes:
        """The id key: configured, or made at random once per deployment.

        A made key is kept in Redis, so every gateway of the deployment derives the same ids.
        """
        if self._key is None:
            await self.redis.set(_KEY, secrets.token_hex(32), nx=True)
            stored = await self.redis.get(_KEY)
            assert stored is not None  # just set, and never expires
            self._key = bytes(stored)
        return self._key

    async def id_for(self, phone_number_id: str, wa_id: str) -> str:
        """The conversation id of two numbers, in this deployment."""
        return conversation_id_for(phone_number_id, wa_id, key=await self.key())

    @staticmethod
    def touch_into(
        pipe: Pipeline,
        conversation_id: str,
        phone_number_id: str,
        wa_id: str,
        *,
        profile_name: str | None,
    ) -> None:
        """Queue the writes that create the conversation if new (the id from ``id_for``)."""
        key = keys.conversation(conversation_id)
        fields: dict[str, Any] = {"phone_number_id": phone_number_id, "wa_id": wa_id}
        if profile_name:
            fields["profile_name"] = profile_name
        pipe.hsetnx(key, "created_at", repr(time.time()))
        pipe.hset(key, mapping=fields)

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
