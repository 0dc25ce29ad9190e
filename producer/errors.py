"""waq's exceptions.

Every error carries a machine-readable ``code`` so that callers (and the gateway, which
renders them as ``{"error": code, "detail": ..., "field": ...}``) never parse messages.

    WaqError                         code: str
    ├── InvalidRequest               a send request broke a contract rule (lists every field)
    │   ├── IdempotencyKeyReused     the key names an earlier, different request
    │   └── OptedOut                 a marketing template to a customer who said STOP
    ├── ConfigurationError           this process is set up unlike the deployment it joins
    └── (worker.errors)              delivery errors live beside the code that raises them:
        ├── GraphError               Meta answered with an error body
        └── GraphTransportError      no answer: timeout, dropped connection, refused
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pydantic

__all__ = [
    "ConfigurationError",
    "FieldError",
    "IdempotencyKeyReused",
    "InvalidRequest",
    "OptedOut",
    "WaqError",
]


class WaqError(Exception):
    """The root of every error waq raises on purpose."""

    code: str = "waq_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def detail(self) -> str:
        """The human-readable message, without the code."""
        return str(self.args[0]) if self.args else ""


class ConfigurationError(WaqError):
    """The process's settings disagree with the deployment's (as found in Redis)."""

    code = "configuration_error"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One broken rule: which field (dotted path), which rule (a code), and why."""

    field: str
    rule: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The JSON form used in HTTP answers and CLI output."""
        return {"field": self.field, "rule": self.rule, "message": self.message}


class InvalidRequest(WaqError):
    """A send request or message broke one or more contract rules; nothing was enqueued."""

    code = "invalid_request"

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
        super().__init__(f"invalid request: {summary}")

    @property
    def field(self) -> str | None:
        """The first offending field, for renderers that show only one."""
        return self.errors[0].field if self.errors else None

    @classmethod
    def from_validation_error(
        cls, exc: pydantic.ValidationError, *, prefix: str = ""
    ) -> InvalidRequest:
        """Name each field by its dotted path (``message.text.body``) and its rule."""
        errors = []
        for err in exc.errors(include_url=False):
            path = ".".join(str(part) for part in err["loc"] if not _is_union_tag(part))
            field = ".".join(p for p in (prefix, path) if p)
            errors.append(FieldError(field=field or "(root)", rule=err["type"], message=err["msg"]))
        return cls(errors)


class IdempotencyKeyReused(InvalidRequest):
    """An idempotency key already used for a different request; nothing was enqueued.

    As Stripe does: a retry must repeat the request it retries, or a typo in a retried body
    would be silently dropped in favour of the first one.
    """

    code = "idempotency_key_reused"

    def __init__(self, idempotency_key: str, message_id: str) -> None:
        self.idempotency_key = idempotency_key
        self.message_id = message_id
        super().__init__(
            [
                FieldError(
                    field="idempotency_key",
                    rule="reused",
                    message=f"{idempotency_key!r} was used for a different request "
                    f"({message_id}); use a new key, or repeat that request exactly",
                )
            ]
        )


class OptedOut(InvalidRequest):
    """A marketing template to a customer on the sender's opt-out list; nothing was enqueued."""

    code = "opted_out"


def _is_union_tag(part: str | int) -> bool:
    # Discriminated unions put their tag ("type=text") and function validators their
    # name into the location; neither is a field a caller can fix.
    return isinstance(part, str) and ("=" in part or part.startswith("function-"))
