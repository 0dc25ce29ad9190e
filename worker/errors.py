"""Delivery errors, beneath ``producer.errors.WaqError``.

WaqError (producer.errors)
├── InvalidRequest
└── DeliveryError                    something stood between a valid request and Meta
    ├── GraphError                   Meta answered with an error body (code, title, details)
    └── GraphTransportError          no usable answer; ``ambiguous`` says whether the
        │                            request may have reached Meta
        ├── GraphTimeout
        └── GraphConnectionError
"""

from __future__ import annotations

from typing import Any

from producer.errors import WaqError

__all__ = [
    "DeliveryError",
    "GraphConnectionError",
    "GraphError",
    "GraphTimeout",
    "GraphTransportError",
]


class DeliveryError(WaqError):
    """A message could not be handed to Meta."""

    code = "delivery_error"


class GraphError(DeliveryError):
    """Meta's error body, typed. ``meta_code`` drives every decision; the rest is for people."""

    code = "graph_error"

    def __init__(
        self,
        *,
        meta_code: int,
        title: str,
        details: str | None = None,
        http_status: int,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        error_type: str | None = None,
    ) -> None:
        self.meta_code = meta_code
        self.title = title
        self.details = details
        self.http_status = http_status
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.error_type = error_type
        suffix = f": {details}" if details else ""
        super().__init__(f"Meta error {meta_code} ({title}){suffix}", code=f"meta_{meta_code}")

    @classmethod
    def from_response(cls, http_status: int, payload: Any) -> GraphError:
        """Read Meta's ``{"error": {...}}`` body; anything else becomes code 0 with the status."""
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            return cls(meta_code=0, title="unparseable error body", http_status=http_status)
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        message = str(error.get("message") or "")
        # Meta's message is "(#131047) Re-engagement message": the title follows the code.
        title = (
            message.split(") ", 1)[1] if message.startswith("(#") and ") " in message else message
        )
        subcode = error.get("error_subcode")
        return cls(
            meta_code=error["code"],
            title=title or "(no title)",
            details=str(details) if details is not None else None,
            http_status=http_status,
            subcode=subcode if isinstance(subcode, int) else None,
            fbtrace_id=error.get("fbtrace_id"),
            error_type=error.get("type"),
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form kept in attempts and dead letters (no secrets: Meta never echoes one)."""
        return {
            "code": self.meta_code,
            "title": self.title,
            "details": self.details,
            "http_status": self.http_status,
            "subcode": self.subcode,
            "fbtrace_id": self.fbtrace_id,
        }


class GraphTransportError(DeliveryError):
    """No answer from the Graph API.

    ``ambiguous`` is true when the request may have reached Meta (it was written, then the
    answer timed out or the connection dropped): such a message may already be on its way,
    so a resend risks a duplicate. False means it certainly never left.
    """

    code = "graph_unreachable"

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous

    def as_dict(self) -> dict[str, Any]:
        """The JSON form kept in attempts and dead letters."""
        return {"code": self.code, "title": self.detail, "ambiguous": self.ambiguous}


class GraphTimeout(GraphTransportError):
    """The Graph API did not answer in time."""

    code = "graph_timeout"


class GraphConnectionError(GraphTransportError):
    """The connection failed or dropped."""

    code = "graph_connection_error"
