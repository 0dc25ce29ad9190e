"""Events: what happened to messages, conversations and numbers, for the services to act on.

Each transition script (``producer.transition_scripts``) appends its event to one Redis stream
per deployment (``keys.EVENTS``) in the same atomic step as the transition, so an event exists
exactly when its transition happened and the stream's order is the transitions' order. The
stream entry's id is the event's id; the worker's pump copies the events into each webhook
subscription's outbox (``worker.subscriptions``). Services in the cluster read the stream with
a consumer group; see docs/events.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

__all__ = ["EVENT_VERSION", "Event", "EventType", "event_id", "stream_id", "wire_body"]

EVENT_VERSION: Final = 1
"""Bumped when an event's fields change incompatibly; new fields do not bump it."""

_PREFIX: Final = "evt_"


class EventType(StrEnum):
    """Every event waq emits.

    ``meta.webhook`` (Meta's raw webhook) only goes to the subscriptions that ask for it by
    name, never through ``*``.
    """

    MESSAGE_QUEUED = "message.queued"
    MESSAGE_SENT = "message.sent"
    """Meta accepted the message (it has a wamid)."""
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_READ = "message.read"
    MESSAGE_FAILED = "message.failed"
    """Meta reported a failure after accepting it; a ``message.dead_lettered`` follows."""
    MESSAGE_DEAD_LETTERED = "message.dead_lettered"
    MESSAGE_REQUEUED = "message.requeued"
    MESSAGE_PURGED = "message.purged"
    """An operator dropped its dead letter; its record went with it."""
    MESSAGE_CANCELLED = "message.cancelled"
    """Taken back before it was handed to Meta (``was``: scheduled, queued or retrying)."""
    MESSAGE_RECEIVED = "message.received"
    CONVERSATION_CREATED = "conversation.created"
    CONVERSATION_WINDOW_CLOSING = "conversation.window_closing"
    BROADCAST_STARTED = "broadcast.started"
    BROADCAST_FINISHED = "broadcast.finished"
    """Every recipient's message left the queue: sent, dead, cancelled or opted out."""
    OPTOUT_ADDED = "optout.added"
    OPTOUT_REMOVED = "optout.removed"
    NUMBER_PAUSED = "number.paused"
    NUMBER_RESUMED = "number.resumed"
    META_WEBHOOK = "meta.webhook"
    WEBHOOK_TEST = "webhook.test"
    """Sent by ``waq webhooks test`` (and the console's test button) to one subscription."""


def event_id(entry_id: str | bytes) -> str:
    """The event id of a stream entry id: ``evt_1764474000000-0``."""
    return _PREFIX + (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)


def stream_id(id_: str) -> str:
    """The stream entry id of an event id (the inverse of ``event_id``)."""
    return id_.removeprefix(_PREFIX)


def _timestamp(entry_id: str) -> str:
    millis = int(entry_id.split("-", 1)[0])
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


class Event(BaseModel):
    """One event, as the stream holds it and webhooks deliver it (Standard Webhooks' shape)."""

    model_config = ConfigDict(frozen=True)

    id: str
    """Stable and unique per deployment: consumers dedupe on it."""
    type: str
    version: int = EVENT_VERSION
    timestamp: str
    """When waq recorded it (ISO 8601, UTC, milliseconds), from the stream entry's id."""
    data: dict[str, Any]

    @classmethod
    def from_entry(cls, entry_id: str | bytes, fields: dict[Any, Any]) -> Event:
        """An event from a stream entry (``XREADGROUP``/``XRANGE``: its id and fields)."""
        text = {_text(k): _text(v) for k, v in fields.items()}
        raw_id = _text(entry_id)
        return cls.model_validate_json(wire_body(raw_id, text["type"], text.get("data", "{}")))

    @property
    def conversation_id(self) -> str | None:
        """The conversation it belongs to, if any (events of one keep their order)."""
        value = self.data.get("conversation_id")
        return str(value) if value is not None else None


def wire_body(entry_id: str, type_: str, data_json: str) -> str:
    """An event's JSON from its stream entry's parts, without re-encoding its data."""
    return (
        f'{{"id":"{event_id(entry_id)}","type":"{type_}","version":{EVENT_VERSION},'
        f'"timestamp":"{_timestamp(entry_id)}","data":{data_json}}}'
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
