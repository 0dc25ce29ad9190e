"""Opt-outs: customers who told a sender number to stop, kept per sender.

Customers join the list by writing a stop keyword (``STOP`` and its equivalents, configurable:
``WAQ_OPT_OUT_KEYWORDS``), by Meta's 131050 ("user stopped marketing messages"), or by an
operator; they leave it by writing a start keyword or by an operator. Every change is an
event (``optout.added`` / ``optout.removed``). Marketing templates to a customer on the list
are refused at enqueue (``OptedOut``, 422 ``opted_out``); broadcasts skip them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

from redis.asyncio import Redis

from producer import keys, transition_scripts
from producer.recipient import normalize_recipient, wa_id_of

__all__ = ["DEFAULT_OPT_IN_KEYWORDS", "DEFAULT_OPT_OUT_KEYWORDS", "OptOuts", "keyword_action"]

DEFAULT_OPT_OUT_KEYWORDS: Final = (
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT",  # English (Twilio's list)
    "PARAR", "BAJA", "ALTO",  # Spanish, Portuguese
    "ARRET", "ARRÊT", "STOPP", "ABMELDEN",  # French, German
)  # fmt: skip
DEFAULT_OPT_IN_KEYWORDS: Final = ("START", "UNSTOP", "YES", "SUBSCRIBE", "INICIAR", "ALTA")


def keyword_action(
    text: str | None, *, opt_out: Iterable[str], opt_in: Iterable[str]
) -> tuple[Literal["out", "in"] | None, str]:
    """Whether a customer's text is a stop or start keyword: the whole message, any case."""
    word = (text or "").strip().strip(".!").upper()
    if not word or len(word) > 32:
        return None, ""
    if word in {k.upper() for k in opt_out}:
        return "out", word
    if word in {k.upper() for k in opt_in}:
        return "in", word
    return None, ""


class OptOuts:
    """A sender's opt-out list, read and changed by operators and services."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._change = redis.register_script(transition_scripts.OPT_OUT)

    async def add(self, phone_number_id: str, customer: str, *, reason: str = "operator") -> bool:
        """Opt a customer out; False if they already were."""
        return bool(await self._change(
            keys=[], args=[phone_number_id, _wa_id(customer), "add", reason]
        ))  # fmt: skip

    async def remove(
        self, phone_number_id: str, customer: str, *, reason: str = "operator"
    ) -> bool:
        """Take a customer off the list; False if they were not on it."""
        return bool(await self._change(
            keys=[], args=[phone_number_id, _wa_id(customer), "remove", reason]
        ))  # fmt: skip

    async def contains(self, phone_number_id: str, customer: str) -> bool:
        """Whether the customer opted out of this sender."""
        key = keys.opt_outs(phone_number_id)
        return bool(await self.redis.sismember(key, _wa_id(customer)))  # type: ignore[misc]

    async def all(self, phone_number_id: str) -> list[str]:
        """Every customer on the list, as E.164 numbers."""
        members = await self.redis.smembers(keys.opt_outs(phone_number_id))  # type: ignore[misc]
        return sorted("+" + (m.decode() if isinstance(m, bytes) else m) for m in members)


def _wa_id(customer: str) -> str:
    """A customer's wa_id from any way of writing the number (ValueError if it is none)."""
    return wa_id_of(normalize_recipient(customer))
