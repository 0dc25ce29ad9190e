"""Console sessions: an operator signs in once with an admin key and gets a signed cookie.

A browser cannot send ``X-API-Key`` on a link, so the console trades the key for a cookie
that holds only a timestamp and an HMAC of it under that key, never the key itself. It is
HttpOnly and SameSite=Strict, and every form carries a CSRF token derived the same way, so
another site can neither read the session nor post with it. Rotating the admin keys ends
every session. Hand-written rather than a session library: it is two HMACs and no state.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Final

__all__ = ["COOKIE", "ConsoleSession", "LoginRequired", "issue_session", "read_session"]

COOKIE: Final = "waq_console"
SESSION_S: Final = 12 * 3600


class LoginRequired(Exception):
    """No valid console session: the page redirects to the sign-in form."""


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in operator: the cookie's value and the CSRF token its forms carry."""

    token: str
    csrf: str

    def csrf_ok(self, given: str | None) -> bool:
        """Whether a form's CSRF token is this session's."""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


def _sign(key: str, purpose: str, value: str) -> str:
    return hmac.new(
        key.encode(), f"waq-console:{purpose}:{value}".encode(), hashlib.sha256
    ).hexdigest()


def issue_session(key: str, *, now: float | None = None) -> ConsoleSession:
    """A session for an operator who gave ``key``."""
    issued = str(int(now if now is not None else time.time()))
    token = f"{issued}.{_sign(key, 'session', issued)}"
    return ConsoleSession(token=token, csrf=_sign(key, "csrf", token))


def read_session(
    token: str | None, admin_keys: tuple[str, ...], *, now: float | None = None
) -> ConsoleSession | None:
    """The session a cookie proves, or None (unsigned, expired, or its key was removed)."""
    if not token or "." not in token:
        return None
    issued, signature = token.split(".", 1)
    if not issued.isdigit() or (now or time.time()) - int(issued) > SESSION_S:
        return None
    for key in admin_keys:
        if hmac.compare_digest(signature.encode(), _sign(key, "session", issued).encode()):
            return ConsoleSession(token=token, csrf=_sign(key, "csrf", token))
    return None
