"""Where is my message? Finds messages by id, wamid, phone number or idempotency key.

Each kind of query is one bounded read: a message id is its record's key, a wamid has its
index (``keys.wamid``), a phone number its recipient's newest messages
(``keys.recipient_messages``), and an idempotency key maps to one id per sender
(``producer.client.message_id_for``), so it costs one lookup per sender number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from producer import keys
from producer.client import message_id_for
from producer.recipient import normalize_recipient

__all__ = ["Found", "find_messages"]

_PHONE = re.compile(r"^\+?[\d\s().-]{7,}$")

QueryKind = Literal["message id", "wamid", "phone number", "idempotency key"]


@dataclass(frozen=True, slots=True)
class Found:
    """What a query was taken as, and the ids of the messages it found (newest first)."""

    kind: QueryKind
    message_ids: list[str]


async def find_messages(redis: Redis, query: str) -> Found:
    """The messages a query names; ids whose record and dead letter are both gone are left out."""
    query = query.strip()
    if query.startswith("m_"):
        return Found("message id", await _existing(redis, [query]))
    if query.startswith("wamid."):
        found = await redis.get(keys.wamid(query))
        ids = [found.decode() if isinstance(found, bytes) else str(found)] if found else []
        return Found("wamid", await _existing(redis, ids))
    if _PHONE.match(query):
        try:
            wa_id = normalize_recipient(query).lstrip("+")
        except ValueError:
            wa_id = None
        if wa_id is not None:
            recent = await redis.lrange(keys.recipient_messages(wa_id), 0, -1)  # type: ignore[misc]
            return Found("phone number", await _existing(redis, [_text(i) for i in recent]))
    senders = sorted(_text(n) for n in await redis.smembers(keys.SENDERS))  # type: ignore[misc]
    ids = [message_id_for(sender, query) for sender in senders]
    return Found("idempotency key", await _existing(redis, ids))


async def _existing(redis: Redis, ids: list[str]) -> list[str]:
    """The ids that still have a record or a dead letter, in order."""
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for message_id in ids:
            pipe.exists(keys.message(message_id), keys.dead_letter(message_id))
        found = await pipe.execute()
    return [message_id for message_id, n in zip(ids, found, strict=True) if n]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
