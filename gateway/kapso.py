"""Kapso's legacy send body, translated to Meta's shape, for teams moving from Kapso.

``{"message": {"content", "message_type", "media_url", ...}}`` (reference section 8). The
result is validated by the same contract as every other message.
"""

from __future__ import annotations

from typing import Any, Final

from producer.errors import FieldError, InvalidRequest

__all__ = ["KAPSO_FIELDS", "is_kapso_message", "kapso_to_meta"]

KAPSO_FIELDS: Final = frozenset(
    {
        "content", "message_type", "media_url", "media_id", "caption", "filename", "latitude",
        "longitude", "location_name", "location_address", "interactive_type", "body_text",
        "header_text", "footer_text", "buttons", "sections", "list_button_text", "template_name",
        "template_language", "template_params", "reaction_emoji", "reacted_to_message_id",
        "contacts",
    }
)  # fmt: skip
_MEDIA: Final = ("image", "video", "audio", "document", "sticker")


def is_kapso_message(message: dict[str, Any]) -> bool:
    """True for Kapso's flat body (``content``/``message_type``), false for Meta's shape."""
    kind = message.get("type")
    return not (isinstance(kind, str) and kind in message) and bool(
        {"content", "message_type"} & message.keys()
    )


def _refuse(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        [FieldError(field=f"message.{field}", rule="kapso_body", message=message)]
    )


def kapso_to_meta(message: dict[str, Any]) -> dict[str, Any]:
    """Meta's message for a Kapso legacy message; unknown fields are refused by name."""
    unknown = sorted(set(message) - KAPSO_FIELDS)
    if unknown:
        raise _refuse(unknown[0], f"not a field of Kapso's message body ({', '.join(unknown)})")
    kind = message.get("message_type", "text")
    content = message.get("content")
    if kind == "text":
        return {"type": "text", "text": {"body": content}}
    if kind in _MEDIA:
        media: dict[str, Any] = {}
        if message.get("media_id") is not None:
            media["id"] = message["media_id"]
        if message.get("media_url") is not None:
            media["link"] = message["media_url"]
        caption = message.get("caption") or (
            content if kind in ("image", "video", "document") else None
        )
        if caption:
            media["caption"] = caption
        if kind == "document" and message.get("filename"):
            media["filename"] = message["filename"]
        return {"type": kind, kind: media}
    if kind == "location":
        location = {
            "latitude": message.get("latitude"),
            "longitude": message.get("longitude"),
            "name": message.get("location_name"),
            "address": message.get("location_address"),
        }
        return {
            "type": "location",
            "location": {k: v for k, v in location.items() if v is not None},
        }
    if kind == "template":
        return {"type": "template", "template": _template(message)}
    if kind == "interactive":
        return {"type": "interactive", "interactive": _interactive(message)}
    if kind == "reaction":
        return {
            "type": "reaction",
            "reaction": {
                "message_id": message.get("reacted_to_message_id"),
                "emoji": message.get("reaction_emoji", ""),
            },
        }
    if kind == "contacts":
        return {"type": "contacts", "contacts": message.get("contacts")}
    raise _refuse("message_type", f"unknown message_type {kind!r}")


def _template(message: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = {
        "name": message.get("template_name"),
        "language": {"code": message.get("template_language") or "en_US"},
    }
    params = message.get("template_params")
    if isinstance(params, list) and params:
        body = [{"type": "text", "text": str(p)} for p in params]
    elif isinstance(params, dict) and params:
        body = [
            {"type": "text", "parameter_name": str(k), "text": str(v)} for k, v in params.items()
        ]
    elif params in (None, [], {}):
        body = []
    else:
        raise _refuse("template_params", "must be a list (positional) or an object (named)")
    if body:
        template["components"] = [{"type": "body", "parameters": body}]
    return template


def _interactive(message: dict[str, Any]) -> dict[str, Any]:
    kind = message.get("interactive_type", "button")
    interactive: dict[str, Any] = {
        "type": kind,
        "body": {"text": message.get("body_text") or message.get("content")},
    }
    if message.get("header_text"):
        interactive["header"] = {"type": "text", "text": message["header_text"]}
    if message.get("footer_text"):
        interactive["footer"] = {"text": message["footer_text"]}
    if kind == "button":
        buttons = message.get("buttons") or []
        if not isinstance(buttons, list):
            raise _refuse("buttons", "must be a list of {id, title} objects")
        interactive["action"] = {"buttons": [{"type": "reply", "reply": b} for b in buttons]}
    elif kind == "list":
        interactive["action"] = {
            "button": message.get("list_button_text"),
            "sections": message.get("sections"),
        }
    else:
        raise _refuse("interactive_type", "must be button or list")
    return interactive
