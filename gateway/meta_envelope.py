"""Meta's error envelope, for the doors that speak Meta's API.

The Graph-compatible door answers with it, and so does the request guard refusing a token.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["meta_error"]


def meta_error(
    status: int, code: int, message: str, details: str, *, error_type: str = "OAuthException"
) -> JSONResponse:
    """Meta's error envelope, as its Graph API answers a refused request."""
    error: dict[str, Any] = {
        "message": message,
        "type": error_type,
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": "waq" + secrets.token_urlsafe(12),
    }
    return JSONResponse({"error": error}, status_code=status)
