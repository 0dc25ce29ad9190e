"""Webhook subscriptions: where services want events delivered, and each one's outbox.

A subscription is a URL, a ``whsec_`` secret (two while it rotates), the event types and
optionally the sender numbers it wants, and how to deliver (concurrency, a batch window).
The worker's pump copies every wanted event into its outbox (``worker.outbox_scripts``); a
delivery job per subscription sends them (``worker.webhook_sender``). Operators manage them
through ``/v1/webhooks``, ``waq webhooks`` and the console, all through ``SubscriptionStore``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from redis.asyncio import Redis

from producer import keys
from producer.events import EventType
from producer.transitions import start_jobs
from worker import outbox_scripts

__all__ = [
    "DELIVER_FUNCTION",
    "DeadEvent",
    "OutboxStats",
    "Subscription",
    "SubscriptionSpec",
    "SubscriptionState",
    "SubscriptionStore",
    "delivery_job_id",
    "new_secret",
]

DELIVER_FUNCTION: Final = "deliver_webhooks"
"""The worker function that drains one subscription's outbox."""

_LOG_LINES: Final = 100
_ROTATION_S: Final = 24 * 3600
"""How long the previous secret still signs after a rotation (consumers update meanwhile)."""

WILDCARD: Final = "*"


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def delivery_job_id(subscription_id: str, token: str) -> str:
    """arq's job id for a subscription's delivery job: one per token, like a lane's."""
    return f"webhooks:{subscription_id}:{token}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SubscriptionSpec(BaseModel):
    """What an operator asks for; validated before anything is stored."""

    url: str = Field(max_length=2048, description="Where events are POSTed (HTTPS).")
    types: list[str] = Field(
        default=[WILDCARD],
        description="Event types wanted; '*' is every type but meta.webhook.",
    )
    numbers: list[str] = Field(
        default=[], description="Only events of these sender phone_number_ids (empty: all)."
    )
    description: str = Field(default="", max_length=200)
    concurrency: int = Field(default=10, ge=1, le=100, description="Requests in flight at once.")
    max_batch: int = Field(default=1, ge=1, le=500, description="Events per request (1: none).")
    buffer_s: float = Field(
        default=0.0, ge=0.0, le=60.0, description="How long a batch waits to fill up."
    )

    @field_validator("url")
    @classmethod
    def _https(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute https:// URL")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError("must be https:// (plain http only to this machine)")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; the signature authenticates waq")
        return url

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: list[str]) -> list[str]:
        known = {t.value for t in EventType} - {EventType.WEBHOOK_TEST.value}
        if not types:
            raise ValueError("name at least one event type, or '*'")
        if unknown := [t for t in types if t != WILDCARD and t not in known]:
            raise ValueError(f"unknown event types {unknown}; known: {sorted(known)}")
        return sorted(set(types))

    @field_validator("numbers")
    @classmethod
    def _digits(cls, numbers: list[str]) -> list[str]:
        if bad := [n for n in numbers if not (n.isascii() and n.isdigit() and len(n) <= 32)]:
            raise ValueError(f"phone_number_ids are digits: {bad}")
        return sorted(set(numbers))

    @field_validator("max_batch")
    @classmethod
    def _raw_alone(cls, max_batch: int, info: ValidationInfo) -> int:
        if max_batch > 1 and EventType.META_WEBHOOK.value in info.data.get("types", ()):
            raise ValueError("meta.webhook is forwarded byte for byte, one per request: "
                             "max_batch must be 1")  # fmt: skip
        return max_batch


class Subscription(SubscriptionSpec):
    """A stored subscription (its secrets stay out of ``repr`` and logs)."""

    id: str
    secret: SecretStr
    previous_secret: SecretStr | None = None
    previous_until: float | None = None
    created_at: float
    since_ms: int
    """Events from this time on are its (an older event never reaches a new subscription)."""

    def signing_secrets(self, now: float | None = None) -> list[str]:
        """The secrets that sign a delivery now (Standard Webhooks: one signature each).

        The current one, and for a day after a rotation the previous one.
        """
        found = [self.secret.get_secret_value()]
        if self.previous_secret is not None and (now or time.time()) < (self.previous_until or 0):
            found.append(self.previous_secret.get_secret_value())
        return found

    def stored(self) -> str:
        """The JSON kept in Redis (secrets included: the workers sign with them)."""
        data = self.model_dump(mode="json")
        data["secret"] = self.secret.get_secret_value()
        if self.previous_secret is not None:
            data["previous_secret"] = self.previous_secret.get_secret_value()
        return json.dumps(data, separators=(",", ":"))


class SubscriptionState(BaseModel):
    """Whether a subscription delivers, and if not, why."""

    state: Literal["active", "paused", "disabled"] = "active"
    reason: str | None = None
    at: float | None = None


class OutboxStats(BaseModel):
    """What a subscription's outbox holds and has done."""

    pending: int = 0
    delivered: int = 0
    dead: int = 0
    attempts: int = 0
    failures: int = 0
    replayed: int = 0


class DeadEvent(BaseModel):
    """An event a subscription gave up on: the event, why, and the receiver's last status."""

    event_id: str
    type: str
    conversation: str
    reason: str
    status: int | None = None
    at: float
    body: str


@dataclass(frozen=True, slots=True)
class WireEvent:
    """An event as an outbox holds it: stream id, type, ``json`` or ``raw``, body; one a line."""

    stream_id: str
    type: str
    raw: bool
    body: str

    @classmethod
    def parse(cls, wire: str | bytes) -> WireEvent:
        text = wire.decode() if isinstance(wire, bytes) else wire
        stream_id, type_, form, body = text.split("\n", 3)
        return cls(stream_id, type_, form == "raw", body)

    @property
    def id(self) -> str:
        """The event's id."""
        return "evt_" + self.stream_id

    @property
    def emitted_at(self) -> float:
        """When it was emitted (unix s), from its stream id's milliseconds."""
        return int(self.stream_id.split("-", 1)[0]) / 1000


class SubscriptionStore:
    """Subscriptions and their outboxes in Redis; the only writer of both outside Lua."""

    def __init__(self, redis: Redis, *, queue_name: str = keys.DEFAULT_QUEUE) -> None:
        self.redis = redis
        self.queue_name = queue_name
        s = outbox_scripts
        self._replay = redis.register_script(s.REPLAY)
        self._enqueue_one = redis.register_script(s.ENQUEUE_ONE)
        self._wake = redis.register_script(s.WAKE_IF_WAITING)
        self._remove = redis.register_script(s.REMOVE)

    async def add(self, spec: SubscriptionSpec, *, secret: str | None = None) -> Subscription:
        """Store a new subscription; it gets the events emitted from now on."""
        now = time.time()
        subscription = Subscription(
            **spec.model_dump(),
            id="sub_" + uuid.uuid4().hex[:16],
            secret=SecretStr(secret or new_secret()),
            created_at=now,
            since_ms=int(now * 1000),
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.WEBHOOK_SUBSCRIPTIONS, subscription.id, subscription.stored())
            if EventType.META_WEBHOOK.value in subscription.types:
                pipe.sadd(keys.WEBHOOK_RAW_WANTED, subscription.id)
            await pipe.execute()
        return subscription

    async def get(self, subscription_id: str) -> Subscription | None:
        """One subscription, or None."""
        raw = await self.redis.hget(keys.WEBHOOK_SUBSCRIPTIONS, subscription_id)  # type: ignore[misc]
        return Subscription.model_validate_json(raw) if raw is not None else None

    async def all(self) -> list[Subscription]:
        """Every subscription, oldest first."""
        raw = await self.redis.hvals(keys.WEBHOOK_SUBSCRIPTIONS)  # type: ignore[misc]
        return sorted(
            (Subscription.model_validate_json(item) for item in raw), key=lambda s: s.created_at
        )

    async def remove(self, subscription_id: str) -> bool:
        """Drop a subscription, its outbox and its dead letters."""
        await self.redis.srem(keys.WEBHOOK_RAW_WANTED, subscription_id)  # type: ignore[misc]
        return bool(await self._remove(keys=[keys.WEBHOOK_SUBSCRIPTIONS], args=[subscription_id]))

    async def rotate_secret(self, subscription_id: str) -> Subscription | None:
        """A new secret; the old one also signs for a day, so receivers can switch over."""
        current = await self.get(subscription_id)
        if current is None:
            return None
        rotated = current.model_copy(
            update={
                "secret": SecretStr(new_secret()),
                "previous_secret": current.secret,
                "previous_until": time.time() + _ROTATION_S,
            }
        )
        await self.redis.hset(keys.WEBHOOK_SUBSCRIPTIONS, subscription_id, rotated.stored())  # type: ignore[misc]
        return rotated

    # -- state ------------------------------------------------------------------------------

    async def state(self, subscription_id: str) -> SubscriptionState:
        """Whether it delivers (active unless paused or disabled)."""
        raw = await self.redis.hget(keys.WEBHOOK_STATES, subscription_id)  # type: ignore[misc]
        return SubscriptionState.model_validate_json(raw) if raw else SubscriptionState()

    async def states(self) -> dict[str, SubscriptionState]:
        """The state of every subscription that is not active."""
        raw = await self.redis.hgetall(keys.WEBHOOK_STATES)  # type: ignore[misc]
        return {_text(k): SubscriptionState.model_validate_json(v) for k, v in raw.items()}

    async def pause(self, subscription_id: str, reason: str) -> None:
        """Stop delivering; new events wait in its dead letters until a replay."""
        value = SubscriptionState(state="paused", reason=reason, at=time.time())
        await self.redis.hset(keys.WEBHOOK_STATES, subscription_id, value.model_dump_json())  # type: ignore[misc]

    async def resume(self, subscription_id: str) -> None:
        """Deliver again (a paused or disabled subscription); its outbox's job starts."""
        await self.redis.hdel(keys.WEBHOOK_STATES, subscription_id)  # type: ignore[misc]
        await self.wake(subscription_id, replace=True)

    # -- outbox -----------------------------------------------------------------------------

    async def stats(self, subscription_id: str) -> OutboxStats:
        """Its outbox's counters."""
        raw = await self.redis.hgetall(keys.subscription(subscription_id, "stats"))  # type: ignore[misc]
        return OutboxStats(**{_text(k): int(v) for k, v in raw.items()})

    async def log(self, subscription_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The last delivery attempts, newest first."""
        raw = await self.redis.lrange(keys.subscription(subscription_id, "log"), 0, limit - 1)  # type: ignore[misc]
        return [json.loads(line) for line in raw]

    async def dead(self, subscription_id: str, limit: int = 100) -> list[DeadEvent]:
        """Its dead letters, oldest first."""
        key = keys.subscription(subscription_id, "dead")
        found = []
        for line in await self.redis.lrange(key, 0, limit - 1):  # type: ignore[misc]
            item = json.loads(line)
            event = WireEvent.parse(item["event"])
            found.append(
                DeadEvent(
                    event_id=event.id, type=event.type, conversation=item["conversation"],
                    reason=item["reason"], status=item.get("status"), at=item["at"],
                    body=event.body,
                )
            )  # fmt: skip
        return found

    async def replay(self, subscription_id: str, *, batch: int = 1000) -> int:
        """Put every dead letter back in its conversation's line, oldest first; resumes it."""
        await self.redis.hdel(keys.WEBHOOK_STATES, subscription_id)  # type: ignore[misc]
        total = 0
        while True:
            replayed, token = await self._replay(
                keys=[keys.subscription(subscription_id, "dead"),
                      keys.subscription(subscription_id, "due"),
                      keys.subscription(subscription_id, "job")],
                args=[subscription_id, batch],
            )  # fmt: skip
            if token:
                await self.start([(subscription_id, _text(token))])
            total += int(replayed)
            if int(replayed) < batch:
                break
        await self.wake(subscription_id)
        return total

    async def send_test(self, subscription_id: str) -> str:
        """Queue a ``webhook.test`` event for one subscription; its event id."""
        stream_id = f"{int(time.time() * 1000)}-test{secrets.token_hex(4)}"
        data = json.dumps({"subscription_id": subscription_id, "message": "a test from waq"})
        wire = f"{stream_id}\n{EventType.WEBHOOK_TEST.value}\njson\n{data}"
        token = await self._enqueue_one(keys=[], args=[subscription_id, "test", wire])
        if token:
            await self.start([(subscription_id, _text(token))])
        return "evt_" + stream_id

    async def wake(self, subscription_id: str, *, replace: bool = False) -> str | None:
        """Start the outbox's job if it has events and no live job (or ``replace`` it)."""
        token = await self._wake(
            keys=[keys.subscription(subscription_id, "due"),
                  keys.subscription(subscription_id, "job")],
            args=[keys.ARQ_JOB_PREFIX + delivery_job_id(subscription_id, ""), 1 if replace else 0],
        )  # fmt: skip
        if not token:
            return None
        await self.start([(subscription_id, _text(token))])
        return _text(token)

    async def start(self, tokens: Iterable[tuple[str, str]]) -> None:
        """Start the delivery job each (subscription id, token) names."""
        await start_jobs(
            self.redis,
            self.queue_name,
            (
                (delivery_job_id(sub, token), DELIVER_FUNCTION,
                 {"subscription_id": sub, "token": token})
                for sub, token in tokens
            ),
        )  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
