"""``X-Hub-Signature-256``: HMAC-SHA256 of the raw body, keyed with the app secret."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["sign", "verify"]


def sign(body: bytes, app_secret: str) -> str:
    """The header value Meta sends: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, app_secret: str) -> bool:
    """Check a header against the raw body, in constant time."""
    return header is not None and hmac.compare_digest(sign(body, app_secret), header)
