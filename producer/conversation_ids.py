"""Conversation ids: a (business number, customer) pair, keyed with a deployment secret.

The id derives from the two numbers, so finding a conversation needs no index, and it is
keyed, so an id seen in a log, a URL or an event does not give the customer's number away
(an unkeyed hash of a phone number is reversed by brute force in milliseconds). Every
process that names conversations (the gateway, producers, workers) must derive the same ids:
they share ``WAQ_CONVERSATION_KEY``, or else a random key kept in Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from redis.asyncio import Redis

from producer import keys
from producer.errors import ConfigurationError

__all__ = ["ConversationIds", "conversation_id_for"]

_RANDOM_KEY: Final = "waq:conversation_key"
"""string, the deployment's conversation-id key when WAQ_CONVERSATION_KEY is unset; no TTL."""


def conversation_id_for(phone_number_id: str, wa_id: str, *, key: bytes) -> str:
    """``c_`` + 24 hex digits of HMAC-SHA-256 over the two numbers, with the deployment's key."""
    digest = hmac.new(key, f"{phone_number_id}:{wa_id}".encode(), hashlib.sha256).hexdigest()
    return "c_" + digest[:24]


class ConversationIds:
    """Derives conversation ids with the configured key, or the deployment's random one."""

    def __init__(self, redis: Redis, *, key: str | None = None) -> None:
        self.redis = redis
        self._configured = key.encode() if key else None
        self._key: bytes | None = None

    async def key(self) -> bytes:
        """The id key, resolved once per process.

        A configured key leaves its fingerprint in Redis; a process without one then refuses
        to derive ids (they would not match the gateway's) instead of making up a key.
        """
        if self._key is not None:
            return self._key
        if self._configured is not None:
            fingerprint = hashlib.sha256(b"waq conversation key\x00" + self._configured)
            await self.redis.set(keys.CONVERSATION_KEY_CONFIGURED, fingerprint.hexdigest()[:16])
            self._key = self._configured
            return self._key
        if await self.redis.exists(keys.CONVERSATION_KEY_CONFIGURED):
            raise ConfigurationError(
                "this deployment sets WAQ_CONVERSATION_KEY: give this process the same key "
                "(Producer(..., conversation_key=...)) so its conversation ids match",
                code="conversation_key_missing",
            )
        await self.redis.set(_RANDOM_KEY, secrets.token_hex(32), nx=True)
        stored = await self.redis.get(_RANDOM_KEY)
        assert stored is not None  # just set, and never expires
        self._key = bytes(stored)
        return self._key

    async def id_for(self, phone_number_id: str, wa_id: str) -> str:
        """The conversation id of two numbers, in this deployment."""
        return conversation_id_for(phone_number_id, wa_id, key=await self.key())
