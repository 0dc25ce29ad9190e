"""A message's status as the HTTP API answers it: ISO 8601 UTC times.

The epoch appears only in fields named ``_at_s``.

The Python API (``Producer.status``) keeps unix floats, which code compares and subtracts;
people and HTTP clients read ``2026-11-30T06:40:01.123456Z`` without converting, and a
float like ``...610.0`` beside ``...610.37`` looked as if delivery came before queueing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field

from producer.status import MessageState, MessageStatus, StatusEvent

__all__ = ["MessageStatusOut", "StatusEventOut", "iso"]


def iso(at: float | None) -> datetime | None:
    """A unix time as an aware UTC datetime (pydantic writes it as ISO 8601 with ``Z``)."""
    return datetime.fromtimestamp(at, UTC) if at is not None else None


class StatusEventOut(BaseModel):
    """One step of a message's history, in the order waq recorded them."""

    at: AwareDatetime = Field(description="When waq recorded the step.")
    state: MessageState
    attempt: int = 0
    detail: str | None = None
    error: dict[str, Any] | None = None
    reported_at: AwareDatetime | None = Field(
        default=None,
        description="Meta's own timestamp of a status it reported: whole seconds, so it may "
        "read earlier than a step waq recorded before it.",
    )

    @classmethod
    def of(cls, event: StatusEvent) -> StatusEventOut:
        """The wire form of a history step."""
        return cls(
            at=iso(event.at), state=event.state, attempt=event.attempt, detail=event.detail,
            error=event.error, reported_at=iso(event.reported_at),
        )  # fmt: skip


class MessageStatusOut(BaseModel):
    """A message's current state and everything that happened to it."""

    id: str
    state: MessageState
    phone_number_id: str
    to: str
    type: str
    conversation_id: str | None = None
    attempts: int = 0
    wamid: str | None = None
    detail: str | None = None
    error: dict[str, Any] | None = None
    created_at: AwareDatetime
    created_at_s: float = Field(description="created_at as a unix time, for arithmetic.")
    updated_at: AwareDatetime
    next_attempt_at: AwareDatetime | None = None
    send_at: AwareDatetime | None = None
    metadata: dict[str, str] = {}
    biz_opaque_callback_data: str | None = None
    history: list[StatusEventOut] = []

    @classmethod
    def of(cls, status: MessageStatus) -> MessageStatusOut:
        """The wire form of a status record."""
        fields = status.model_dump(exclude={"history"})
        return cls.model_validate(
            {**fields, "created_at": iso(status.created_at), "created_at_s": status.created_at,
             "updated_at": iso(status.updated_at), "next_attempt_at": iso(status.next_attempt_at),
             "send_at": iso(status.send_at),
             "history": [StatusEventOut.of(e) for e in status.history]}
        )  # fmt: skip
