"""Meta's error answers, as the sandbox produces them."""

from __future__ import annotations

import secrets
from typing import Any

__all__ = ["MetaError", "invalid", "invalid_value", "missing", "no_token", "token_refused"]


class MetaError(Exception):
    """An error the sandbox answers the way Meta does: HTTP status plus ``{"error": {...}}``."""

    def __init__(
        self,
        code: int,
        title: str,
        details: str,
        *,
        http_status: int = 400,
        subcode: int | None = None,
        error_type: str = "OAuthException",
        message: str | None = None,
    ) -> None:
        super().__init__(f"({code}) {title}: {details}")
        self.message = message
        self.code = code
        self.title = title
        self.details = details
        self.http_status = http_status
        self.subcode = subcode
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        """Meta's synchronous error body."""
        error: dict[str, Any] = {
            "message": self.message or f"(#{self.code}) {self.title}",
            "type": self.error_type,
            "code": self.code,
            "error_data": {"messaging_product": "whatsapp", "details": self.details},
            "fbtrace_id": "A" + secrets.token_urlsafe(16),
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        return {"error": error}

    def webhook_error(self) -> dict[str, Any]:
        """The same error as Meta puts it in a ``failed`` status webhook."""
        return {
            "code": self.code,
            "title": self.title,
            "message": self.title,
            "error_data": {"details": self.details},
            "href": "/documentation/business-messaging/whatsapp/support/error-codes",
        }


def missing(param: str) -> MetaError:
    """131008, as Meta names a missing parameter."""
    return MetaError(131008, "Required parameter is missing", f"The parameter {param} is required.")


def invalid(param: str, why: str) -> MetaError:
    """100, as Meta names an invalid or over-long parameter."""
    return MetaError(100, "Invalid parameter", f"Param {param} {why}")


def invalid_value(param: str, why: str) -> MetaError:
    """131009, a value Meta parsed but refuses."""
    return MetaError(131009, "Parameter value is not valid", f"{param}: {why}")


def no_token() -> MetaError:
    """A request with no bearer token: Meta's OAuthException 2500, HTTP 400, before anything else.

    OAuth errors carry Meta's plain sentence as ``message``, not the ``(#code) title`` form
    of the WhatsApp errors.
    """
    sentence = "An active access token must be used to query information about the current user."
    return MetaError(2500, "Access token required", sentence, message=sentence)


def token_refused(details: str) -> MetaError:
    """190, HTTP 401: a token Meta cannot parse, or one that expired or was revoked."""
    return MetaError(190, "Invalid OAuth access token", details, http_status=401, message=details)
