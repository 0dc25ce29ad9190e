"""Console sessions: an operator signs in once with an admin key and gets a session cookie.

A browser cannot send ``X-API-Key`` on a link, so the console trades the key for a random
session id in an HttpOnly, SameSite=Strict cookie. The session lives in Redis (never the
key: a hash of it), so signing out, or removing the admin key it was opened with, ends it
at once; every form carries the session's own CSRF token. Failed sign-ins are throttled
per client and across all clients, so guessing keys is slow however it is spread.
Hand-written rather than a session library: a Redis key per session and two counters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

__all__ = [
    "COOKIE",
    "SESSION_S",
    "ConsoleSession",
    "ConsoleSessions",
    "LoginRequired",
    "SignInThrottled",
]

COOKIE: Final = "waq_console"
SESSION_S: Final = 12 * 3600
_SESSION: Final = "waq:console:session:"
"""string per session, keyed by a hash of its id: JSON {key_hash, csrf}; TTL 12 h."""
_FAILED: Final = "waq:console:failed:"
"""counter per client address (and ``*`` for all), per throttle window; expires with it."""


class LoginRequired(Exception):
    """No valid console session: the page redirects to the sign-in form."""


class SignInThrottled(Exception):
    """Too many failed sign-ins lately; try again after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in operator: the cookie's value and the CSRF token its forms carry."""

    token: str
    csrf: str

    def csrf_ok(self, given: str | None) -> bool:
        """Whether a form's CSRF token is this session's."""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class ConsoleSessions:
    """Issues, reads and revokes console sessions; counts failed sign-ins."""

    def __init__(
        self,
        redis: Redis,
        *,
        per_client: int = 5,
        overall: int = 50,
        window_s: int = 300,
    ) -> None:
        self.redis = redis
        self.per_client = per_client
        self.overall = overall
        self.window_s = window_s

    async def check_throttle(self, client: str) -> None:
        """Raise ``SignInThrottled`` while ``client`` (or everyone) failed too often."""
        mine, everyone = await self.redis.mget([_FAILED + client, _FAILED + "*"])
        if int(mine or 0) >= self.per_client or int(everyone or 0) >= self.overall:
            ttl = max(await self.redis.ttl(_FAILED + client), await self.redis.ttl(_FAILED + "*"))
            raise SignInThrottled(max(ttl, 1))

    async def failed(self, client: str) -> None:
        """Count a failed sign-in for ``client`` and for everyone."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in (_FAILED + client, _FAILED + "*"):
                pipe.incr(key)
                pipe.expire(key, self.window_s, nx=True)
            await pipe.execute()

    async def issue(self, admin_key: str) -> ConsoleSession:
        """A new session for an operator who gave ``admin_key``."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        record = json.dumps({"key_hash": _digest(admin_key), "csrf": csrf})
        await self.redis.set(_SESSION + _digest(token), record, ex=SESSION_S)
        return ConsoleSession(token=token, csrf=csrf)

    async def read(self, token: str | None, admin_keys: tuple[str, ...]) -> ConsoleSession | None:
        """The session a cookie names, or None.

        None when it is unknown, expired, signed out, or its admin key is gone.
        """
        if not token or len(token) > 128:
            return None
        raw = await self.redis.get(_SESSION + _digest(token))
        if raw is None:
            return None
        record = json.loads(raw)
        if not any(hmac.compare_digest(record["key_hash"], _digest(key)) for key in admin_keys):
            return None
        return ConsoleSession(token=token, csrf=str(record["csrf"]))

    async def revoke(self, token: str) -> None:
        """End a session (sign-out)."""
        await self.redis.delete(_SESSION + _digest(token))
