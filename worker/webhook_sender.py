"""Delivering an outbox: signed POSTs, retried with backoff, in order per conversation.

One job per subscription at a time (an arq job named by a token, as a sender's lane is) claims
conversations whose first event is due, POSTs each (or a batch of them) signed as Standard
Webhooks says, and settles the answer: 2xx delivered; 408, 429, 5xx and no answer retried on
a schedule of about a day (Svix's); 410 disables the subscription; any other answer refuses
the event, which goes to the subscription's dead letters. A subscription whose retries run
out is paused with the reason, and what it holds waits in its dead letters for a replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import httpx
import structlog
from arq.worker import Retry
from redis.asyncio import Redis
from standardwebhooks import Webhook

from producer import keys
from producer.events import wire_body
from worker import outbox_scripts
from worker.metrics import WorkerMetrics
from worker.subscriptions import Subscription, SubscriptionStore, WireEvent

__all__ = ["DEFAULT_RETRY_SCHEDULE_S", "WebhookConfig", "WebhookSender"]

log = structlog.get_logger("waq.webhooks")

DEFAULT_RETRY_SCHEDULE_S: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Svix's: after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h, about 28 h in all."""

_SNIPPET_CHARS: Final = 200
_LOG_LINES: Final = 100

Outcome = Literal["delivered", "retry", "refused", "exhausted", "gone"]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """How deliveries are made; from the settings (or a test)."""

    timeout_s: float = 10.0
    retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    jitter: float = 0.2
    """Each wait is the schedule's, times a random factor within 1 ± jitter."""
    slice_s: float = 5.0
    user_agent: str = "waq-webhooks/1"

    @property
    def claim_deadline_ms(self) -> int:
        """A conversation in flight comes due again after this (its worker died)."""
        return int((self.timeout_s + 5) * 1000)


@dataclass(slots=True)
class _Group:
    conversation: str
    tries: int
    events: list[WireEvent]


@dataclass(slots=True)
class _Report:
    requests: int = 0
    delivered: int = 0
    failed: int = 0
    stopped: str = ""
    outcomes: dict[str, int] = field(default_factory=dict)


class WebhookSender:
    """The delivery job's work, one per worker process (shared by its jobs)."""

    def __init__(
        self,
        redis: Redis,
        store: SubscriptionStore,
        client: httpx.AsyncClient,
        config: WebhookConfig,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.client = client
        self.config = config
        self.metrics = metrics
        self._claim = redis.register_script(outbox_scripts.CLAIM)
        self._settle = redis.register_script(outbox_scripts.SETTLE)

    async def run(self, subscription_id: str, token: str) -> dict[str, Any]:
        """Deliver for a time slice; raises ``Retry`` to come back (at once, or when due)."""
        subscription = await self.store.get(subscription_id)
        report = _Report()
        if subscription is None:
            report.stopped = "gone"
            return _as_dict(report)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.config.slice_s
        in_flight: set[asyncio.Task[None]] = set()
        come_back: float | None = None
        batch = subscription.max_batch > 1
        while True:
            if loop.time() >= end:
                come_back = 0.001  # behind the jobs due now, as a lane yields
                break
            free = (1 if len(in_flight) < subscription.concurrency else 0) if batch else (
                subscription.concurrency - len(in_flight)
            )  # fmt: skip
            if free <= 0:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            answer = await self._claim(
                keys=[keys.subscription(subscription_id, "due"),
                      keys.subscription(subscription_id, "job"),
                      keys.WEBHOOK_SUBSCRIPTIONS, keys.subscription(subscription_id, "tries")],
                args=[subscription_id, token, subscription.max_batch if batch else free,
                      subscription.max_batch, int(subscription.buffer_s * 1000),
                      self.config.claim_deadline_ms, 0 if in_flight else 1],
            )  # fmt: skip
            kind = _text(answer[0])
            if kind == "ok":
                groups = _groups(answer[1:])
                requests = [groups] if batch else [[group] for group in groups]
                for request in requests:
                    task = asyncio.create_task(self._deliver(subscription, request, report))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                continue
            if kind in ("stale", "gone", "inactive", "idle"):
                report.stopped = kind
                break
            wait_s = float(answer[1]) / 1000 if len(answer) > 1 and answer[1] else None
            if kind == "sleep":
                come_back = max(wait_s or 0.0, 0.001)
                break
            timeout = min(wait_s if wait_s is not None else self.config.slice_s, end - loop.time())
            if in_flight:
                await asyncio.wait(
                    in_flight, timeout=max(timeout, 0.001), return_when=asyncio.FIRST_COMPLETED
                )
            else:
                await asyncio.sleep(max(timeout, 0.005))
        if in_flight:
            await asyncio.gather(*in_flight)
        log.info("webhooks.run", subscription_id=subscription_id, **_as_dict(report))
        if come_back is not None:
            raise Retry(defer=come_back)
        return _as_dict(report)

    async def _deliver(
        self, subscription: Subscription, groups: list[_Group], report: _Report
    ) -> None:
        events = [event for group in groups for event in group.events]
        message_id, body = _request(events, batch=subscription.max_batch > 1)
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC)
        signatures = " ".join(
            Webhook(secret).sign(message_id, stamp, body)
            for secret in subscription.signing_secrets(now)
        )
        headers = {
            "content-type": "application/json",
            "user-agent": self.config.user_agent,
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": signatures,
        }
        status: int | None = None
        error: str | None = None
        snippet = ""
        retry_after: float | None = None
        started = time.perf_counter()
        try:
            response = await self.client.post(
                subscription.url, content=body.encode(), headers=headers,
                timeout=self.config.timeout_s,
            )  # fmt: skip
            status = response.status_code
            snippet = response.text[:_SNIPPET_CHARS]
            retry_after = _seconds(response.headers.get("retry-after"))
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        latency = time.perf_counter() - started
        tries = max(group.tries for group in groups)
        outcome, reason, delay = self._judge(status, error, tries, retry_after)
        line = json.dumps({
            "at": now, "webhook_id": message_id, "event_id": events[0].id,
            "events": len(events), "status": status, "error": error,
            "latency_ms": round(latency * 1000, 1), "outcome": outcome, "response": snippet,
        })  # fmt: skip
        args: list[str | int | float] = [
            subscription.id,
            outcome,
            int(delay * 1000),
            reason,
            status or "",
            line,
            _LOG_LINES,
        ]
        for group in groups:
            args += [group.conversation, len(group.events), group.events[0].stream_id]
        await self._settle(
            keys=[keys.subscription(subscription.id, "due"),
                  keys.subscription(subscription.id, "tries"), keys.WEBHOOK_SUBSCRIPTIONS],
            args=args,
        )  # fmt: skip
        report.requests += 1
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        if outcome == "delivered":
            report.delivered += len(events)
        else:
            report.failed += len(events)
        if self.metrics is not None:
            done = time.time()
            self.metrics.webhook_delivery(
                subscription.id, outcome, latency,
                delivered=[(e.type, done - e.emitted_at) for e in events]
                if outcome == "delivered" else (),
            )  # fmt: skip
        if outcome in ("exhausted", "gone", "refused"):
            log.warning(
                "webhooks.gave_up", subscription_id=subscription.id, outcome=outcome,
                reason=reason, events=len(events),
            )  # fmt: skip

    def _judge(
        self, status: int | None, error: str | None, tries: int, retry_after: float | None
    ) -> tuple[Outcome, str, float]:
        """What an answer means: the outcome, the reason (for dead letters), the retry wait."""
        if status is not None and 200 <= status < 300:
            return "delivered", "", 0.0
        if status == 410:
            return "gone", "the receiver answered 410 Gone: the subscription is disabled", 0.0
        said = f"HTTP {status}" if status is not None else (error or "no answer")
        if status is not None and status not in (408, 429) and status < 500:
            return "refused", f"the receiver refused it ({said}); not retried", 0.0
        schedule = self.config.retry_schedule_s
        if tries >= len(schedule):
            total = _duration(sum(schedule))
            return (
                "exhausted",
                f"not delivered after {len(schedule) + 1} attempts over {total} (last: {said}): "
                "the subscription is paused",
                0.0,
            )
        wait = schedule[tries] * random.uniform(1 - self.config.jitter, 1 + self.config.jitter)  # noqa: S311 - jitter, not a secret
        return "retry", said, max(wait, retry_after or 0.0)


def _request(events: list[WireEvent], *, batch: bool) -> tuple[str, str]:
    """(the webhook-id, the body): one event as it is, or a batch of them."""
    if not batch:
        [event] = events
        return event.id, event.body if event.raw else wire_body(
            event.stream_id, event.type, event.body
        )
    ids = ",".join(event.id for event in events)
    batch_id = "batch_" + hashlib.sha256(ids.encode()).hexdigest()[:24]
    bodies = ",".join(wire_body(e.stream_id, e.type, e.body) for e in events)
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    return batch_id, f'{{"type":"batch","timestamp":"{stamp}","data":[{bodies}]}}'


def _groups(items: list[Any]) -> list[_Group]:
    groups = []
    i = 0
    while i < len(items):
        conversation, tries, n = _text(items[i]), int(items[i + 1]), int(items[i + 2])
        events = [WireEvent.parse(wire) for wire in items[i + 3 : i + 3 + n]]
        groups.append(_Group(conversation, tries, events))
        i += 3 + n
    return groups


def _seconds(value: str | None) -> float | None:
    """A Retry-After header's seconds (its date form is ignored)."""
    try:
        return min(float(value), 3600.0) if value else None
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _as_dict(report: _Report) -> dict[str, Any]:
    return {
        "requests": report.requests,
        "delivered": report.delivered,
        "failed": report.failed,
        "stopped": report.stopped,
        "outcomes": report.outcomes,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
