"""Turn a dead free-form message into an approved template, for ``requeue-template``.

After a wave of 131047s (the customer's 24-hour window had closed) the only message Meta
will deliver is a template. The operator names one and says how to fill its body
parameters from each dead message: ``{text}`` is the original text (or media caption),
``{to}`` the recipient, ``{id}`` the message id, ``{metadata.KEY}`` one of the caller's
tags; anything else is literal. ``name=...`` makes a named parameter.

Placeholders are replaced with a fixed pattern, not ``str.format``: format strings reach
into attributes, and the operator's string should not be able to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from producer.errors import WaqError
from worker.dead_letters import DeadLetter

__all__ = ["RewriteError", "TemplateRewrite"]

_PLACEHOLDER: Final = re.compile(r"\{(text|to|id|metadata\.[A-Za-z0-9_.-]+)\}")
_NAMED: Final = re.compile(r"^([a-z0-9_]+)=(.*)$", re.DOTALL)


class RewriteError(WaqError):
    """A dead letter that cannot fill the template (no text for ``{text}``, say)."""

    code = "rewrite_failed"


@dataclass(frozen=True, slots=True)
class TemplateRewrite:
    """An approved template, and how each dead message fills its body parameters."""

    name: str
    language: str
    parameters: tuple[str, ...] = ("{text}",)

    def request_for(self, letter: DeadLetter) -> dict[str, Any]:
        """The dead message's request with its message replaced by the filled template."""
        template: dict[str, Any] = {"name": self.name, "language": {"code": self.language}}
        if self.parameters:
            parameters = [self._parameter(p, letter) for p in self.parameters]
            template["components"] = [{"type": "body", "parameters": parameters}]
        request = {k: v for k, v in letter.request.items() if k != "message"}
        return {**request, "message": {"type": "template", "template": template}}

    def _parameter(self, spec: str, letter: DeadLetter) -> dict[str, str]:
        named = _NAMED.match(spec)
        text = _PLACEHOLDER.sub(lambda m: _value(m.group(1), letter), named[2] if named else spec)
        if not text.strip():
            raise RewriteError(f"parameter {spec!r} is empty for this message")
        parameter = {"type": "text", "text": text}
        if named:
            parameter["parameter_name"] = named[1]
        return parameter


def _value(name: str, letter: DeadLetter) -> str:
    if name == "to":
        return letter.to
    if name == "id":
        return letter.id
    if name.startswith("metadata."):
        key = name.removeprefix("metadata.")
        if key not in letter.metadata:
            raise RewriteError(f"the message has no metadata {key!r}")
        return letter.metadata[key]
    message = letter.request.get("message") or {}
    body = message.get(message.get("type", ""), {})
    text = body.get("body") if message.get("type") == "text" else body.get("caption")
    if not isinstance(text, str) or not text:
        raise RewriteError(f"a {letter.type} message has no text for {{text}}")
    return text
