"""What a sandbox is told at start: credentials, numbers, templates, pacing, randomness."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "DEFAULT_PHONE_NUMBER_ID",
    "NumberConfig",
    "SandboxConfig",
    "TemplateSpec",
    "WindowErrors",
    "sender_ids",
]

DEFAULT_PHONE_NUMBER_ID = "106540352242922"


class WindowErrors(StrEnum):
    """How a free-form message to a closed window fails."""

    SYNC = "sync"
    """At once, as an HTTP 400 with code 131047."""
    ASYNC = "async"
    """Accepted with 200 and a wamid, then a ``failed`` status webhook, as Meta often does."""
    MIXED = "mixed"
    """Either, chosen by the seeded random generator."""


@dataclass(slots=True)
class NumberConfig:
    """A business phone number the sandbox serves."""

    display_phone_number: str = "15550783881"
    verified_name: str = "waq Sandbox"
    mps: int = 80
    quality_rating: str = "GREEN"
    status: str = "CONNECTED"
    health: str = "AVAILABLE"
    # When set, every send from this number fails with this Meta code (e.g. 131031, 368).
    send_error_code: int | None = None


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """An approved template: its languages and how many body variables it has."""

    languages: frozenset[str]
    body_parameters: int = 0
    status: str = "APPROVED"  # Meta's: APPROVED, PENDING, REJECTED, PAUSED, DISABLED


def _default_templates() -> dict[str, TemplateSpec]:
    return {
        "hello_world": TemplateSpec(frozenset({"en_US"}), 0),
        "order_confirmation": TemplateSpec(frozenset({"en_US"}), 2),
        "waq_followup": TemplateSpec(frozenset({"en", "en_US"}), 1),
    }


def sender_ids(count: int) -> list[str]:
    """``count`` business number ids: the default one, then the ids after it."""
    return [str(int(DEFAULT_PHONE_NUMBER_ID) + i) for i in range(count)]


@dataclass(slots=True)
class SandboxConfig:
    """Everything the sandbox needs; defaults make a usable fake Meta with no setup."""

    # Not secrets: the fake Meta's well-known defaults, replaced by WAQ_* settings in use.
    access_token: str = "sandbox-token"  # noqa: S105
    app_secret: str = "sandbox-app-secret"  # noqa: S105
    webhook_url: str | None = None
    seed: int = 0
    numbers: dict[str, NumberConfig] = field(
        default_factory=lambda: {DEFAULT_PHONE_NUMBER_ID: NumberConfig()}
    )
    templates: dict[str, TemplateSpec] = field(default_factory=_default_templates)
    pair_interval_s: float = 6.0
    pair_burst: int = 45
    window_s: float = 24 * 3600
    window_errors: WindowErrors = WindowErrors.SYNC
    status_delay_s: float = 0.02
    send_read_receipts: bool = True
