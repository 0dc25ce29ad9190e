"""``waq loadtest``: bulk test traffic through the real pipeline, watched to its end, reported.

The load goes in through the Python producer or the HTTP gateway, at a target rate or as fast
as it can, spread over K recipients and P sender numbers. Every message is then read back
from its status record until it is final (delivered, read, dead or failed) or the deadline
passes; the report comes from those records, so it counts what happened to each message,
not what a worker said.

The safety rail: a load test only talks to a sandbox. Against any other Graph API it refuses,
unless told ``allow_production`` and given an allow-list, and then it sends only to the
numbers on that list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel
from redis.asyncio import Redis

from producer import keys
from producer.client import Producer
from producer.errors import WaqError
from producer.status import MessageState, StatusEvent

__all__ = ["LoadProgress", "LoadReport", "LoadTest", "LoadTestRefused", "is_sandbox"]

_DONE = frozenset({MessageState.DELIVERED, MessageState.READ, MessageState.DEAD,
                   MessageState.FAILED})  # fmt: skip


class LoadTestRefused(WaqError):
    """The safety rail: not a sandbox, and not explicitly allowed."""

    code = "loadtest_refused"


async def is_sandbox(graph_base_url: str) -> bool:
    """Whether the Graph API at ``graph_base_url`` is waq's sandbox (it answers its control API)."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(f"{graph_base_url.rstrip('/')}/_sandbox/health")
    except httpx.HTTPError:
        return False
    return answer.status_code == 200


class Latency(BaseModel):
    """Percentiles of one latency, in seconds."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: list[float]) -> Latency:
        """The percentiles of ``values`` (None when there are none)."""
        if not values:
            return cls(count=0, p50=None, p90=None, p99=None, max=None)
        ordered = sorted(values)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

        return cls(count=len(ordered), p50=at(0.5), p90=at(0.9), p99=at(0.99), max=at(1.0))


@dataclass(frozen=True, slots=True)
class LoadProgress:
    """Where a load test is, with the states counted so far.

    Enqueueing: ``done`` of ``total`` in; watching: ``done`` of ``total`` final.
    """

    phase: Literal["enqueue", "watch"]
    done: int
    total: int
    states: dict[str, int] = field(default_factory=dict)


class LoadReport(BaseModel):
    """What became of a load test's messages."""

    messages: int
    recipients: int
    senders: int
    via: str
    enqueue_seconds: float
    enqueue_rate: float
    send_rate: float | None
    """Acceptances per second, first to last."""
    enqueue_to_accepted: Latency
    enqueue_to_delivered: Latency
    states: dict[str, int]
    dead_letters_by_code: dict[str, int]
    retries: int
    rate_limit_waits: int
    """Messages that waited at least once for their customer's pair limit (the number's
    limit shows in the send rate: every message waits its slot)."""
    unfinished: int
    """Messages not final when the watch ended (deadline passed)."""
    rejected: int = 0
    """Requests the gateway refused (each with its error in the batch answer)."""
    limit_mps: float | None = None
    """The senders' rate limits together (what the send rate is held under)."""
    accepted_per_second: list[int] = []
    """Acceptances in each second from the first (the rate over time)."""
    latency_histogram_s: dict[str, list[int]] = {}
    """Enqueue-to-accepted and -to-delivered counts per ``LATENCY_EDGES_S`` bucket."""
    settings: dict[str, Any] = {}
    """How the test was run (for the report file)."""

    def render(self) -> str:
        """The report as an operator reads it."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:,.0f} ms"

        lines = [
            f"{self.messages} messages to {self.recipients} recipients from {self.senders} "
            f"sender(s), via the {self.via}",
            f"enqueue   {self.enqueue_rate:,.0f} msg/s ({self.enqueue_seconds:.2f} s)",
            "send      "
            + (f"{self.send_rate:,.0f} msg/s accepted by Meta" if self.send_rate else "-"),
        ]
        for name, latency in (
            ("enqueue → accepted ", self.enqueue_to_accepted),
            ("enqueue → delivered", self.enqueue_to_delivered),
        ):  # delivered: when waq had Meta's status (Meta stamps it to the whole second)
            lines.append(
                f"{name}  p50 {ms(latency.p50)}  p90 {ms(latency.p90)}  p99 {ms(latency.p99)}"
                f"  max {ms(latency.max)}  (n={latency.count})"
            )
        lines.append("          (delivered: when waq had Meta's status webhook; Meta's own "
                     "timestamps are whole seconds)")  # fmt: skip
        lines.append("states    " + ", ".join(f"{k} {v}" for k, v in sorted(self.states.items())))
        dead = ", ".join(f"{k}: {v}" for k, v in self.dead_letters_by_code.items()) or "none"
        lines.append(f"dead letters by code  {dead}")
        lines.append(f"retries {self.retries}, messages that waited for a customer's limit "
                     f"{self.rate_limit_waits}, unfinished {self.unfinished}, "
                     f"refused at enqueue {self.rejected}")  # fmt: skip
        return "\n".join(lines)


@dataclass
class LoadTest:
    """One load test: what to send, how, and how long to watch."""

    redis: Redis
    senders: list[str]
    recipients: list[str]
    messages: int = 1000
    rate: float = 0.0
    """Messages per second to enqueue; 0 is as fast as possible."""
    via: Literal["producer", "gateway"] = "producer"
    gateway_url: str | None = None
    api_key: str | None = None
    template: str | None = None
    timeout_s: float = 120.0
    queue_name: str = keys.DEFAULT_QUEUE
    default_mps: float = 80.0
    """The rate of a sender with no configured limit (for the report's limit line)."""
    conversation_key: str | None = None
    """The deployment's WAQ_CONVERSATION_KEY, if it sets one (the producer names
    conversations with it)."""
    progress: Callable[[LoadProgress], None] = lambda _: None
    ids: list[str] = field(default_factory=list)
    rejected: int = 0

    def requests(self) -> list[dict[str, Any]]:
        """The send requests: round-robin over recipients and senders, tagged for the report."""
        stamp = f"{time.time():.0f}"
        message: dict[str, Any] = (
            {"type": "template", "template": {"name": self.template, "language": {"code": "en_US"}}}
            if self.template
            else {"type": "text", "text": {"body": "waq load test"}}
        )
        return [
            {
                "phone_number_id": self.senders[i % len(self.senders)],
                "to": self.recipients[i % len(self.recipients)],
                "message": message,
                "idempotency_key": f"loadtest-{stamp}-{i}",
                "metadata": {"source": "loadtest"},
            }
            for i in range(self.messages)
        ]

    async def run(self) -> LoadReport:
        """Enqueue, watch, report."""
        started = time.monotonic()
        await self._enqueue(self.requests())
        enqueue_s = time.monotonic() - started
        unfinished = await self._watch()
        return await self._report(enqueue_s, unfinished)

    async def _enqueue(self, requests: list[dict[str, Any]]) -> None:
        batch = 500 if self.rate <= 0 else max(1, int(self.rate / 10))
        started = time.monotonic()
        client = (
            httpx.AsyncClient(
                base_url=self.gateway_url or "", headers={"X-API-Key": self.api_key or ""}
            )
            if self.via == "gateway"
            else None
        )
        producer = Producer(
            self.redis, queue_name=self.queue_name, conversation_key=self.conversation_key
        )
        try:
            for sent in range(0, len(requests), batch):
                chunk = requests[sent : sent + batch]
                if client is not None:
                    answer = await client.post("/v1/messages/batch", json={"messages": chunk})
                    answer.raise_for_status()
                    results = answer.json()["results"]
                    self.ids += [item["id"] for item in results if item.get("id")]
                    self.rejected += sum(1 for item in results if not item.get("id"))
                else:
                    self.ids += [e.message_id for e in await producer.enqueue_many(chunk)]
                self.progress(LoadProgress("enqueue", len(self.ids) + self.rejected, len(requests)))
                if self.rate > 0:  # pace: the next batch is due at (sent + batch) / rate
                    due = started + (sent + len(chunk)) / self.rate
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            if client is not None:
                await client.aclose()

    async def _states(self) -> list[str | None]:
        states: list[str | None] = []
        for start in range(0, len(self.ids), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for message_id in self.ids[start : start + 1000]:
                    pipe.hget(keys.message(message_id), "state")
                states += [s.decode() if s else None for s in await pipe.execute()]
        return states

    async def _watch(self) -> int:
        """Poll the records until every message is final or the deadline passes."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            states = await self._states()
            counts: dict[str, int] = {}
            for state in states:
                counts[state or "unknown"] = counts.get(state or "unknown", 0) + 1
            left = sum(n for s, n in counts.items() if s not in _DONE)
            self.progress(LoadProgress("watch", len(states) - left, len(states), counts))
            if left == 0 or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.5)

    async def _report(self, enqueue_s: float, unfinished: int) -> LoadReport:
        accepted_at: list[float] = []
        to_accepted: list[float] = []
        to_delivered: list[float] = []
        # Where each message ended is its record's state, as the watch counted it, not its
        # history's last step: Meta's webhooks can be recorded before the worker records the
        # acceptance they follow (the history is in recorded order), and then a read
        # message's last step is "accepted".
        states: dict[str, int] = {}
        for state in await self._states():
            states[state or "unknown"] = states.get(state or "unknown", 0) + 1
        dead: dict[str, int] = {}
        retries = waits = 0
        limits = await self.redis.hmget(keys.RATE_LIMITS, self.senders)  # type: ignore[misc]
        limit_mps = sum(float(v) if v is not None else self.default_mps for v in limits)
        for start in range(0, len(self.ids), 500):
            async with self.redis.pipeline(transaction=False) as pipe:
                for message_id in self.ids[start : start + 500]:
                    pipe.lrange(keys.message_history(message_id), 0, -1)
                histories = await pipe.execute()
            for raw in histories:
                events = [StatusEvent.model_validate_json(e) for e in raw]
                if not events:
                    continue
                queued = events[0].at
                for event in events:
                    if event.state is MessageState.ACCEPTED:
                        accepted_at.append(event.at)
                        to_accepted.append(event.at - queued)
                    elif event.state is MessageState.DELIVERED:
                        to_delivered.append(event.at - queued)
                    elif event.state is MessageState.DEAD:
                        code = str((event.error or {}).get("code"))
                        dead[code] = dead.get(code, 0) + 1
                retries += sum(1 for e in events if e.state is MessageState.RETRYING)
                waits += any("rate limit" in (e.detail or "") for e in events)
        span = max(accepted_at) - min(accepted_at) if len(accepted_at) > 1 else 0.0
        per_second = [0] * (int(span) + 1 if accepted_at else 0)
        for at in accepted_at:
            per_second[int(at - min(accepted_at))] += 1
        return LoadReport(
            messages=len(self.ids),
            recipients=len(self.recipients),
            senders=len(self.senders),
            via=self.via,
            enqueue_seconds=round(enqueue_s, 3),
            enqueue_rate=round(len(self.ids) / enqueue_s, 1) if enqueue_s else 0.0,
            send_rate=round((len(accepted_at) - 1) / span, 1) if span else None,
            enqueue_to_accepted=Latency.of(to_accepted),
            enqueue_to_delivered=Latency.of(to_delivered),
            states=states,
            dead_letters_by_code=dict(sorted(dead.items(), key=lambda kv: -kv[1])),
            retries=retries,
            rate_limit_waits=waits,
            unfinished=unfinished,
            rejected=self.rejected,
            limit_mps=limit_mps,
            accepted_per_second=per_second,
            latency_histogram_s={
                "enqueue → accepted": _histogram(to_accepted),
                "enqueue → delivered": _histogram(to_delivered),
            },
            settings={"messages": self.messages, "rate": self.rate, "via": self.via,
                      "recipients": len(self.recipients), "senders": self.senders,
                      "template": self.template, "timeout_s": self.timeout_s},
        )  # fmt: skip


def _histogram(values: list[float]) -> list[int]:
    """Counts per ``keys.LATENCY_EDGES_S`` bucket (the last: slower than every edge)."""
    edges = keys.LATENCY_EDGES_S
    counts = [0] * (len(edges) + 1)
    for value in values:
        counts[next((i for i, edge in enumerate(edges) if value <= edge), len(edges))] += 1
    return counts
