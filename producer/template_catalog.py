"""The WhatsApp Business Account's templates, as last synced from Meta, kept in Redis.

Most template dead letters (132001 no such template or translation, 132000 wrong number of
parameters, 132015 paused, 132016 disabled) are knowable when a message is enqueued. A
worker syncs the catalog from ``GET /{version}/{waba_id}/message_templates``; the producer
refuses a template message that the catalog says will fail, naming the field. A catalog
never synced checks nothing: a deployment without ``WAQ_WABA_ID`` works as before.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from producer.errors import FieldError
from producer.template import Template

__all__ = ["CatalogTemplate", "TemplateCatalog", "body_parameter_count"]

_SYNCED_AT: Final = ""  # the hash field holding the last sync's time
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class CatalogTemplate:
    """One template in one language, as Meta lists it."""

    name: str
    language: str
    status: str
    category: str
    body_parameters: int

    @classmethod
    def from_meta(cls, item: Mapping[str, Any]) -> CatalogTemplate:
        """From one entry of Meta's ``message_templates`` list."""
        body: Mapping[str, Any] = next(
            (c for c in item.get("components") or [] if str(c.get("type")).upper() == "BODY"),
            {},
        )
        variables = set(_PLACEHOLDER.findall(str(body.get("text") or "")))
        return cls(
            name=str(item["name"]),
            language=str(item["language"]),
            status=str(item.get("status", "")),
            category=str(item.get("category", "")),
            body_parameters=len(variables),
        )


def body_parameter_count(template: Template) -> int:
    """How many body parameters a template message fills."""
    return sum(
        len(component.parameters)
        for component in template.components or ()
        if component.type == "body"
    )


class TemplateCatalog:
    """Reads and replaces the synced catalog; checks template messages against it."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def replace(self, templates: Iterable[CatalogTemplate]) -> int:
        """Swap in a whole new catalog, atomically (a template Meta removed is gone)."""
        fields = {
            f"{t.name}:{t.language}": json.dumps(
                {"status": t.status, "category": t.category, "body_parameters": t.body_parameters}
            )
            for t in templates
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.TEMPLATES)
            pipe.hset(keys.TEMPLATES, mapping={**fields, _SYNCED_AT: repr(time.time())})
            await pipe.execute()
        return len(fields)

    async def all(self) -> tuple[float | None, list[CatalogTemplate]]:
        """When it was synced (None: never), and every template, by name and language."""
        raw = await self.redis.hgetall(keys.TEMPLATES)  # type: ignore[misc]
        fields = {_text(k): _text(v) for k, v in raw.items()}
        synced = fields.pop(_SYNCED_AT, None)
        templates = []
        for key, value in sorted(fields.items()):
            name, language = key.rsplit(":", 1)
            data = json.loads(value)
            templates.append(CatalogTemplate(name=name, language=language, **data))
        return (float(synced) if synced else None), templates

    async def check(self, templates: list[tuple[str, Template]]) -> list[list[FieldError]]:
        """The rules each (field prefix, template) breaks by the catalog, in order.

        One round trip (two when a translation is missing).
        """
        if not templates:
            return []
        wanted = [f"{t.name}:{t.language.code}" for _, t in templates]
        names = sorted({t.name for _, t in templates})
        raw = await self.redis.hmget(keys.TEMPLATES, [_SYNCED_AT, *wanted])  # type: ignore[misc]
        if raw[0] is None:
            return [[] for _ in templates]  # never synced: nothing to check against
        # Which names exist at all, to tell an unknown template from a missing translation:
        # one more read, only when a translation is missing.
        known_names = set(names) & await self._names() if None in raw[1:] else set(names)
        return [
            _errors(prefix, template, entry, template.name in known_names)
            for (prefix, template), entry in zip(templates, raw[1:], strict=True)
        ]

    @staticmethod
    def categories_into(pipe: Pipeline, templates: list[Template]) -> None:
        """Queue the read of each template's catalog entry (answer: ``parse_categories``)."""
        pipe.hmget(keys.TEMPLATES, [f"{t.name}:{t.language.code}" for t in templates])

    @staticmethod
    def parse_categories(raw: list[bytes | None]) -> list[str | None]:
        """Each template's category by the catalog (MARKETING, UTILITY...), None if unknown."""
        return [json.loads(entry).get("category") if entry else None for entry in raw]

    async def _names(self) -> set[str]:
        keys_ = await self.redis.hkeys(keys.TEMPLATES)  # type: ignore[misc]
        return {_text(k).rsplit(":", 1)[0] for k in keys_ if _text(k)}


def _errors(
    prefix: str, template: Template, entry: bytes | None, name_known: bool
) -> list[FieldError]:
    field = f"{prefix}message.template"
    if entry is None:
        if name_known:
            return [FieldError(f"{field}.language.code", "template_language",
                               f"template {template.name} has no {template.language.code} "
                               "translation (Meta: 132001)")]  # fmt: skip
        return [FieldError(f"{field}.name", "template_unknown",
                           f"no template {template.name} in the WhatsApp Business Account "
                           "(Meta: 132001); `waq templates list` shows them")]  # fmt: skip
    data = json.loads(entry)
    if data["status"] != "APPROVED":
        code = "132015" if data["status"] == "PAUSED" else "132016"
        return [FieldError(f"{field}.name", "template_not_approved",
                           f"template {template.name} is {data['status']}, not APPROVED "
                           f"(Meta: {code})")]  # fmt: skip
    given, expected = body_parameter_count(template), int(data["body_parameters"])
    if given != expected:
        return [FieldError(f"{field}.components", "template_parameters",
                           f"the body of {template.name} takes {expected} parameters, "
                           f"{given} given (Meta: 132000)")]  # fmt: skip
    return []


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
