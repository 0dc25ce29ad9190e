"""The body rules Meta checks on ``POST /messages``, written apart from ``producer/``.

The sandbox must not import the contract it tests: two independent readings of Meta's rules
check each other, and a rule one side forgets shows up as a disagreement in the tests.
"""

from __future__ import annotations

import re
from typing import Any

from sandbox.meta_error import invalid, invalid_value, missing

__all__ = [
    "MESSAGE_TYPES",
    "check_body",
    "media_extension_ok",
    "template_body_parameter_count",
]

MESSAGE_TYPES = frozenset(
    {"text", "image", "video", "audio", "document", "sticker", "location", "contacts",
     "interactive", "reaction", "template"}
)  # fmt: skip
_MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
_CAPTIONED = ("image", "video", "document")
_EXTENSIONS = {
    "image": {"jpg", "jpeg", "png"},
    "video": {"mp4", "3gp", "3gpp"},
    "audio": {"aac", "amr", "mp3", "m4a", "ogg", "opus"},
    "sticker": {"webp"},
}
_KNOWN_EXTENSIONS = {e for exts in _EXTENSIONS.values() for e in exts} | {
    "gif", "bmp", "heic", "svg", "tif", "tiff", "mov", "avi", "mkv", "webm", "wav", "flac",
}  # fmt: skip
_PHONE = re.compile(r"^\+?[\d\s().\-]{5,25}$")


def _str(obj: dict[str, Any], key: str, path: str, *, max_len: int | None = None) -> str:
    value = obj.get(key)
    if value is None or value == "":
        raise missing(f"{path}['{key}']")
    if not isinstance(value, str):
        raise invalid(f"{path}['{key}']", "must be a string")
    if max_len is not None and len(value) > max_len:
        raise invalid(f"{path}['{key}']", f"must be at most {max_len} characters long")
    return value


def _opt_str(obj: dict[str, Any], key: str, path: str, *, max_len: int) -> None:
    if obj.get(key) is not None:
        _str(obj, key, path, max_len=max_len)


def _obj(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        raise missing(f"{path}['{key}']" if path else key)
    if not isinstance(value, dict):
        raise invalid(f"{path}['{key}']" if path else key, "must be an object")
    return value


def check_body(body: Any) -> None:
    """Raise the ``MetaError`` Meta would answer for this send body, or return."""
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    if body.get("messaging_product") != "whatsapp":
        raise invalid("messaging_product", "must be whatsapp")
    if body.get("recipient_type", "individual") not in ("individual", "group"):
        raise invalid("recipient_type", "must be one of {individual, group}")
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise missing("to")
    if not _PHONE.match(to):
        raise invalid_value("to", "is not a valid phone number")
    callback = body.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        raise invalid("biz_opaque_callback_data", "must be a string of at most 512 characters")
    kind = body.get("type", "text")
    if kind not in MESSAGE_TYPES:
        raise invalid("type", f"must be one of {{{', '.join(sorted(MESSAGE_TYPES))}}}")
    if body.get("context") is not None:
        if kind == "reaction":
            raise invalid("context", "is not supported for reaction messages")
        _str(_obj(body, "context", ""), "message_id", "context")
    if kind == "contacts":
        if body.get("contacts") is None:
            raise missing("contacts")
        _contacts(body["contacts"], "contacts")
    else:
        _CHECKS[kind](_obj(body, kind, ""), kind)


def _text(text: dict[str, Any], path: str) -> None:
    _str(text, "body", path, max_len=4096)
    if "preview_url" in text and not isinstance(text["preview_url"], bool):
        raise invalid(f"{path}['preview_url']", "must be a boolean")


def media_extension_ok(kind: str, link: str) -> bool:
    """False when a link's extension is a known type this media kind does not take."""
    name = link.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    if kind not in _EXTENSIONS or extension not in _KNOWN_EXTENSIONS:
        return True
    return extension in _EXTENSIONS[kind]


def _media(media: dict[str, Any], kind: str) -> None:
    has_id, has_link = media.get("id") is not None, media.get("link") is not None
    if not has_id and not has_link:
        raise missing(f"{kind}['id'] or {kind}['link']")
    if has_id and has_link:
        raise invalid(kind, "must have either id or link, not both")
    if has_link:
        link = _str(media, "link", kind)
        if not link.startswith(("http://", "https://")):
            raise invalid_value(f"{kind}['link']", "must be an http or https URL")
    else:
        _str(media, "id", kind)
    if kind in _CAPTIONED:
        _opt_str(media, "caption", kind, max_len=1024)
    elif "caption" in media:
        raise invalid(f"{kind}['caption']", f"is not supported for {kind}")
    if kind == "document":
        _opt_str(media, "filename", kind, max_len=240)
    elif "filename" in media:
        raise invalid(f"{kind}['filename']", f"is not supported for {kind}")
    if "voice" in media and (kind != "audio" or not isinstance(media["voice"], bool)):
        raise invalid(f"{kind}['voice']", "is a boolean on audio only")


def _number(obj: dict[str, Any], key: str, path: str, limit: float) -> None:
    value = obj.get(key)
    if value is None:
        raise missing(f"{path}['{key}']")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise invalid_value(f"{path}['{key}']", "must be a number") from None
    if not -limit <= number <= limit:
        raise invalid_value(f"{path}['{key}']", f"must be between -{limit:g} and {limit:g}")


def _location(location: dict[str, Any], path: str) -> None:
    _number(location, "latitude", path, 90)
    _number(location, "longitude", path, 180)


def _contacts(contacts: Any, path: str) -> None:
    if not isinstance(contacts, list) or not 1 <= len(contacts) <= 257:
        raise invalid(path, "must be a list of 1 to 257 contacts")
    for i, contact in enumerate(contacts):
        if not isinstance(contact, dict):
            raise invalid(f"{path}[{i}]", "must be an object")
        _str(_obj(contact, "name", f"{path}[{i}]"), "formatted_name", f"{path}[{i}]['name']")


def _reaction(reaction: dict[str, Any], path: str) -> None:
    _str(reaction, "message_id", path)
    if not isinstance(reaction.get("emoji"), str):
        raise missing(f"{path}['emoji']")


def _header(header: dict[str, Any], path: str, *, text_only: bool = False) -> None:
    kind = str(header.get("type"))
    allowed = ("text",) if text_only else ("text", "image", "video", "document")
    if kind not in allowed:
        raise invalid(f"{path}['type']", f"must be one of {{{', '.join(allowed)}}}")
    if kind == "text":
        _str(header, "text", path, max_len=60)
    else:
        _media(_obj(header, kind, path), kind)


_INTERACTIVE_KINDS = (
    "button", "list", "cta_url", "location_request_message", "catalog_message", "product",
    "product_list", "flow", "address_message",
)  # fmt: skip


def _interactive(interactive: dict[str, Any], path: str) -> None:
    kind = interactive.get("type")
    if kind not in _INTERACTIVE_KINDS:
        raise invalid(f"{path}['type']", "must be one of {" + ", ".join(_INTERACTIVE_KINDS) + "}")
    if kind in ("location_request_message", "catalog_message", "product", "product_list"):
        _commerce(interactive, str(kind), path)
        return
    if interactive.get("header") is not None:
        _header(_obj(interactive, "header", path), f"{path}['header']", text_only=kind == "list")
    _str(
        _obj(interactive, "body", path),
        "text",
        f"{path}['body']",
        max_len=4096 if kind == "list" else 1024,
    )
    if interactive.get("footer") is not None:
        _str(_obj(interactive, "footer", path), "text", f"{path}['footer']", max_len=60)
    action = _obj(interactive, "action", path)
    apath = f"{path}['action']"
    if kind == "button":
        _buttons(action, apath)
    elif kind == "list":
        _list(action, apath)
    elif kind == "flow":
        _flow(action, apath)
    elif kind == "address_message":
        _address(action, apath)
    else:
        if action.get("name") != "cta_url":
            raise invalid(f"{apath}['name']", "must be cta_url")
        params = _obj(action, "parameters", apath)
        _str(params, "display_text", f"{apath}['parameters']", max_len=20)
        if not _str(params, "url", f"{apath}['parameters']").startswith(("http://", "https://")):
            raise invalid_value(f"{apath}['parameters']['url']", "must be an http or https URL")


def _commerce(interactive: dict[str, Any], kind: str, path: str) -> None:
    """Location requests, the catalog, one product and product lists, as Meta checks them."""
    apath = f"{path}['action']"
    action = _obj(interactive, "action", path)
    if kind == "product_list":
        header = _obj(interactive, "header", path)
        if header.get("type") != "text":
            raise invalid(f"{path}['header']['type']", "must be text for a product list")
        _str(header, "text", f"{path}['header']", max_len=60)
    elif interactive.get("header") is not None:
        raise invalid(f"{path}['header']", f"is not allowed for {kind}")
    if kind != "product" or interactive.get("body") is not None:
        _str(_obj(interactive, "body", path), "text", f"{path}['body']", max_len=1024)
    if interactive.get("footer") is not None:
        if kind == "location_request_message":
            raise invalid(f"{path}['footer']", "is not allowed for location_request_message")
        _str(_obj(interactive, "footer", path), "text", f"{path}['footer']", max_len=60)
    if kind == "location_request_message" and action.get("name") != "send_location":
        raise invalid(f"{apath}['name']", "must be send_location")
    if kind == "catalog_message" and action.get("name") != "catalog_message":
        raise invalid(f"{apath}['name']", "must be catalog_message")
    if kind == "product":
        _str(action, "catalog_id", apath)
        _str(action, "product_retailer_id", apath)
    if kind == "product_list":
        _str(action, "catalog_id", apath)
        sections = action.get("sections")
        if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
            raise invalid(f"{apath}['sections']", "must have between 1 and 10 sections")
        items = [
            _str(item, "product_retailer_id", f"{apath}['sections'][{i}]['product_items'][{j}]")
            for i, section in enumerate(sections)
            for j, item in enumerate(
                _list_of(section, "product_items", f"{apath}['sections'][{i}]")
            )
        ]
        if len(items) > 30:
            raise invalid(f"{apath}['sections']", "must hold at most 30 products in all")


def _address(action: dict[str, Any], path: str) -> None:
    if action.get("name") != "address_message":
        raise invalid(f"{path}['name']", "must be address_message")
    if _obj(action, "parameters", path).get("country") not in ("IN", "SG"):
        raise invalid(f"{path}['parameters']['country']", "must be IN or SG")


def _flow(action: dict[str, Any], path: str) -> None:
    if action.get("name") != "flow":
        raise invalid(f"{path}['name']", "must be flow")
    ppath = f"{path}['parameters']"
    params = _obj(action, "parameters", path)
    if params.get("flow_message_version") != "3":
        raise invalid(f"{ppath}['flow_message_version']", "must be 3")
    _str(params, "flow_cta", ppath, max_len=20)
    if ("flow_id" in params) == ("flow_name" in params):
        raise invalid(ppath, "needs flow_id or flow_name, not both")
    if params.get("flow_action", "navigate") not in ("navigate", "data_exchange"):
        raise invalid(f"{ppath}['flow_action']", "must be navigate or data_exchange")
    payload = params.get("flow_action_payload")
    if payload is not None:
        if params.get("flow_action") == "data_exchange":
            raise invalid(f"{ppath}['flow_action_payload']", "only goes with navigate")
        _str(
            _obj(params, "flow_action_payload", ppath), "screen", f"{ppath}['flow_action_payload']"
        )


def _list_of(parent: Any, key: str, path: str) -> list[dict[str, Any]]:
    value = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(value, list) or not value:
        raise invalid(f"{path}['{key}']", "must be a non-empty list")
    return [v if isinstance(v, dict) else {} for v in value]


def _buttons(action: dict[str, Any], path: str) -> None:
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        raise invalid(f"{path}['buttons']", "must have between 1 and 3 buttons")
    titles, ids = set(), set()
    for i, button in enumerate(buttons):
        reply = _obj(button, "reply", f"{path}['buttons'][{i}]") if isinstance(button, dict) else {}
        bpath = f"{path}['buttons'][{i}]['reply']"
        ids.add(_str(reply, "id", bpath, max_len=256))
        titles.add(_str(reply, "title", bpath, max_len=20))
    if len(titles) != len(buttons) or len(ids) != len(buttons):
        raise invalid_value(f"{path}['buttons']", "button titles and ids must be unique")


def _list(action: dict[str, Any], path: str) -> None:
    _str(action, "button", path, max_len=20)
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
        raise invalid(f"{path}['sections']", "must have between 1 and 10 sections")
    row_ids: list[str] = []
    for i, section in enumerate(sections):
        spath = f"{path}['sections'][{i}]"
        if not isinstance(section, dict):
            raise invalid(spath, "must be an object")
        if len(sections) > 1:
            _str(section, "title", spath, max_len=24)
        else:
            _opt_str(section, "title", spath, max_len=24)
        rows = section.get("rows")
        if not isinstance(rows, list) or not rows:
            raise missing(f"{spath}['rows']")
        for j, row in enumerate(rows):
            rpath = f"{spath}['rows'][{j}]"
            if not isinstance(row, dict):
                raise invalid(rpath, "must be an object")
            row_ids.append(_str(row, "id", rpath, max_len=200))
            _str(row, "title", rpath, max_len=24)
            _opt_str(row, "description", rpath, max_len=72)
    if len(row_ids) > 10:
        raise invalid(f"{path}['sections']", "must have at most 10 rows in total")
    if len(set(row_ids)) != len(row_ids):
        raise invalid_value(f"{path}['sections']", "row ids must be unique")


def _template(template: dict[str, Any], path: str) -> None:
    _str(template, "name", path, max_len=512)
    _str(_obj(template, "language", path), "code", f"{path}['language']")
    components = template.get("components", [])
    if not isinstance(components, list):
        raise invalid(f"{path}['components']", "must be a list")
    for i, component in enumerate(components):
        _template_component(component, f"{path}['components'][{i}]", in_card=False)


_COMPONENT_KINDS = ("header", "body", "button", "limited_time_offer", "carousel")


def _template_component(component: Any, cpath: str, *, in_card: bool) -> None:
    kinds = _COMPONENT_KINDS[:3] if in_card else _COMPONENT_KINDS
    if not isinstance(component, dict) or component.get("type") not in kinds:
        raise invalid(f"{cpath}['type']", "must be one of {" + ", ".join(kinds) + "}")
    if component["type"] == "carousel":
        cards = component.get("cards")
        if not isinstance(cards, list) or not 1 <= len(cards) <= 10:
            raise invalid(f"{cpath}['cards']", "must have between 1 and 10 cards")
        for k, card in enumerate(cards):
            kpath = f"{cpath}['cards'][{k}]"
            if not isinstance(card, dict) or card.get("card_index") != k:
                raise invalid(f"{kpath}['card_index']", f"must be {k}")
            for m, inner in enumerate(_list_of(card, "components", kpath)):
                _template_component(inner, f"{kpath}['components'][{m}]", in_card=True)
        return
    params = component.get("parameters", [])
    if not isinstance(params, list):
        raise invalid(f"{cpath}['parameters']", "must be a list")
    for j, param in enumerate(params):
        if not isinstance(param, dict) or not isinstance(param.get("type"), str):
            raise missing(f"{cpath}['parameters'][{j}]['type']")
        if param["type"] not in param:
            raise missing(f"{cpath}['parameters'][{j}]['{param['type']}']")
    named = [isinstance(p, dict) and "parameter_name" in p for p in params]
    if any(named) and not all(named):
        raise invalid_value(f"{cpath}['parameters']", "mixes named and positional parameters")


def template_body_parameter_count(template: dict[str, Any]) -> int:
    """How many body variables the request fills."""
    for component in template.get("components") or []:
        if component.get("type") == "body":
            return len(component.get("parameters") or [])
    return 0


_CHECKS = {
    "text": _text,
    **dict.fromkeys(_MEDIA_TYPES, _media),
    "location": _location,
    "interactive": _interactive,
    "reaction": _reaction,
    "template": _template,
}
