"""The gateway's ``/metrics``: what Redis holds (queue, in flight, dead letters, paused numbers).

These are read at scrape time rather than counted, so every gateway reports the same truth
and a restart loses nothing. Workers serve their own counters (``worker.metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from producer import keys
from worker.overview import NumberState, Overview, read_overview
from worker.subscriptions import OutboxStats, SubscriptionState, SubscriptionStore

__all__ = ["QueueMetrics"]


class QueueMetrics(Collector):
    """Gauges from one Redis read per scrape, in the gateway's own registry."""

    def __init__(self, redis: Redis, *, queue_name: str, default_mps: float = 80.0) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.default_mps = default_mps
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._overview: Overview | None = None
        self._by_code: dict[str, int] = {}
        self._outboxes: list[tuple[str, SubscriptionState, OutboxStats]] = []
        self._stream: dict[str, float] = {}

    async def render(self) -> bytes:
        """Read Redis, then the exposition text."""
        self._overview = await read_overview(
            self.redis, queue_name=self.queue_name, default_mps=self.default_mps
        )
        counts = await self.redis.hgetall(keys.DEAD_LETTER_COUNTS)  # type: ignore[misc]
        self._by_code = {
            label.removeprefix("code:"): int(value)
            for label, value in ((k.decode(), v) for k, v in counts.items())
            if label.startswith("code:")
        }
        self._stream = await self._read_stream()
        store = SubscriptionStore(self.redis)
        states = await store.states()
        self._outboxes = [
            (s.id, states.get(s.id, SubscriptionState()), await store.stats(s.id))
            for s in await store.all()
        ]
        return generate_latest(self.registry)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The last read, as gauges (prometheus-client calls this from ``generate_latest``)."""
        overview = self._overview
        if overview is None:
            return
        yield GaugeMetricFamily(
            "waq_queue_depth", "Messages not yet final, due now or later.", overview.queue_depth
        )
        yield GaugeMetricFamily(
            "waq_queue_due",
            "Messages due now (conversation heads whose time came).",
            overview.queue_due,
        )
        yield GaugeMetricFamily(
            "waq_in_flight", "Lane jobs a worker holds now.", overview.in_flight
        )
        yield GaugeMetricFamily(
            "waq_workers_alive", "1 when a worker polls the queue.", int(overview.workers_alive)
        )
        yield GaugeMetricFamily(
            "waq_dead_letter_queue_size", "Entries in the dead-letter queue.", overview.dead_letters
        )
        by_code = GaugeMetricFamily(
            "waq_dead_letters", "Dead-letter entries by error code.", labels=["code"]
        )
        for code, count in sorted(self._by_code.items()):
            by_code.add_metric([code], count)
        yield by_code
        states = dict.fromkeys(NumberState, 0)
        pending = GaugeMetricFamily(
            "waq_number_pending", "Messages not yet final, by sender.", labels=["phone_number_id"]
        )
        for number in overview.numbers:
            states[number.state] += 1
            pending.add_metric([number.phone_number_id], number.pending)
        yield pending
        yield GaugeMetricFamily(
            "waq_paused_numbers", "Sender numbers paused now.", states[NumberState.PAUSED]
        )
        yield from self._webhook_gauges()
        yield GaugeMetricFamily(
            "waq_throttled_numbers",
            "Sender numbers Meta has slowed down (recovering).",
            states[NumberState.THROTTLED],
        )

    async def _read_stream(self) -> dict[str, float]:
        """The events stream: emitted ever, held now, and how far the pump is behind."""
        try:
            info = await self.redis.xinfo_stream(keys.EVENTS)
        except ResponseError:  # no event yet
            return {"emitted": 0, "length": 0, "lag_s": 0}
        cursor = await self.redis.get(keys.EVENTS_CURSOR)
        last = info.get("last-generated-id") or b"0-0"

        def millis(entry_id: bytes | str) -> int:
            text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            return int(text.split("-", 1)[0])

        lag_ms = millis(last) - millis(cursor) if cursor else 0
        return {
            "emitted": float(info.get("entries-added", info.get("length", 0))),
            "length": float(info.get("length", 0)),
            "lag_s": max(lag_ms, 0) / 1000,
        }

    def _webhook_gauges(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Each subscription's backlog, dead letters, deliveries, failures and state."""
        labels = ["subscription"]
        families = {
            "pending": GaugeMetricFamily(
                "waq_webhook_pending", "Events waiting in a subscription's outbox.", labels=labels
            ),
            "dead": GaugeMetricFamily(
                "waq_webhook_dead", "Events in a subscription's dead letters.", labels=labels
            ),
            "delivered": GaugeMetricFamily(
                "waq_webhook_delivered", "Events a subscription received.", labels=labels
            ),
            "failures": GaugeMetricFamily(
                "waq_webhook_failures", "Failed requests to a subscription.", labels=labels
            ),
        }
        active = GaugeMetricFamily(
            "waq_webhook_active", "1 while a subscription delivers (not paused or disabled).",
            labels=labels,
        )  # fmt: skip
        for subscription_id, state, stats in self._outboxes:
            for name, family in families.items():
                family.add_metric([subscription_id], getattr(stats, name))
            active.add_metric([subscription_id], int(state.state == "active"))
        yield from families.values()
        yield active
        yield CounterMetricFamily(
            "waq_events_emitted", "Events ever added to the stream.",
            value=self._stream.get("emitted", 0),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "waq_events_stream_length", "Events the stream holds now (WAQ_EVENTS_MAXLEN).",
            value=self._stream.get("length", 0),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "waq_events_pump_lag_seconds",
            "How far the newest event is ahead of what the pump handed to subscriptions.",
            value=self._stream.get("lag_s", 0),
        )
