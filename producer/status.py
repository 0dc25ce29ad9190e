"""A message's state and history, as the producer reports them and the worker records them."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["FINAL_STATES", "STATE_RANK", "MessageState", "MessageStatus", "StatusEvent"]


class MessageState(StrEnum):
    """Where a message is on its way to the customer."""

    SCHEDULED = "scheduled"
    """Waiting for its ``send_at``; then it joins its conversation, ``queued``."""
    QUEUED = "queued"
    """Enqueued, waiting for a worker (or for a paused number to resume)."""
    SENDING = "sending"
    """A worker is calling the Graph API."""
    RETRYING = "retrying"
    """A transient error; the next attempt is at ``next_attempt_at``."""
    ACCEPTED = "accepted"
    """Meta accepted it and gave a wamid (not yet delivered)."""
    SENT = "sent"
    """Meta reports it left for the customer's phone."""
    DELIVERED = "delivered"
    """Meta reports it on the customer's phone."""
    READ = "read"
    """Meta reports the customer read it."""
    FAILED = "failed"
    """Meta reported a failure after accepting it; a dead letter follows."""
    DEAD = "dead"
    """It will not be sent: see the dead-letter queue for why and what to do."""
    CANCELLED = "cancelled"
    """Taken back before it was handed to Meta; it will not be sent."""


FINAL_STATES = frozenset(
    {
        MessageState.ACCEPTED,
        MessageState.SENT,
        MessageState.DELIVERED,
        MessageState.READ,
        MessageState.FAILED,
        MessageState.DEAD,
        MessageState.CANCELLED,
    }
)
"""States after which no worker sends the message again."""

STATE_RANK = {
    MessageState.SCHEDULED: 0,
    MessageState.QUEUED: 0,
    MessageState.SENDING: 1,
    MessageState.RETRYING: 1,
    MessageState.ACCEPTED: 2,
    MessageState.SENT: 3,
    MessageState.DELIVERED: 4,
    MessageState.READ: 5,
    MessageState.FAILED: 6,
    MessageState.DEAD: 6,
    MessageState.CANCELLED: 6,
}
"""A state never moves to a lower rank (statuses arrive late and out of order); the
worker's own states (ranks 0 and 1) move freely among themselves."""


class StatusEvent(BaseModel):
    """One step of a message's history."""

    model_config = ConfigDict(frozen=True)

    at: float
    """When waq recorded the step (unix s): a history is in this order."""
    state: MessageState
    attempt: int = 0
    detail: str | None = None
    error: dict[str, Any] | None = None
    reported_at: float | None = None
    """Meta's own timestamp of a status it reported (whole seconds, so it may read earlier
    than a step waq recorded before it)."""


class MessageStatus(BaseModel):
    """A message's current state and everything that happened to it."""

    model_config = ConfigDict(frozen=True)

    id: str
    state: MessageState
    phone_number_id: str
    to: str
    type: str
    conversation_id: str | None = None
    """The (business number, customer) pair's id, as in the message's events."""
    attempts: int = 0
    wamid: str | None = None
    next_attempt_at: float | None = None
    detail: str | None = None
    error: dict[str, Any] | None = None
    created_at: float
    updated_at: float
    metadata: dict[str, str] = {}
    biz_opaque_callback_data: str | None = None
    """The caller's own value, sent to Meta after waq's id and echoed in its statuses."""
    send_at: float | None = None
    """When it was scheduled to leave (unix s), if it was."""
    history: list[StatusEvent] = []
