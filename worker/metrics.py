"""A worker's Prometheus metrics: what its sends became, how long Meta took, how long it waited.

Each worker counts only its own work, in its own registry (no global state), and serves it on
``WAQ_WORKER_METRICS_PORT``; Prometheus sums the workers. What lives in Redis (queue depth,
dead letters, paused numbers) is read once, by the gateway's ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

__all__ = ["WorkerMetrics"]

# Meta usually answers in 100-500 ms; the tail up to the 15 s timeout matters too.
_LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
# A claimed slot is at most the claim's horizon (0.5 s) away; most are a few ms.
_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# An event goes out in milliseconds, or after retries: minutes to a day.
_AGE_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 1800.0, 7200.0, 36000.0)


class WorkerMetrics:
    """The counters and histograms one worker process updates."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.outcomes = Counter(
            "waq_send_outcomes",
            "Send attempts by outcome (accepted, dead, retrying, throttled, paused, unknown) "
            "and Meta's error code ('' when none).",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.retries = Counter(
            "waq_retries",
            "Attempts that failed and will be retried, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.graph_latency = Histogram(
            "waq_graph_request_seconds",
            "Graph API send calls by result (ok, error: Meta answered with an error, "
            "transport: no answer).",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rate_limit_wait = Histogram(
            "waq_rate_limit_wait_seconds",
            "How long a send slept for its rate-limit slot.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.rate_limit_deferrals = Counter(
            "waq_rate_limit_deferrals",
            "Claimed sends put back in line unsent, by reason (missed: sent then, they would "
            "have come closer together than the limiter booked).",
            ["limit"],
            registry=self.registry,
        )

        self.events = Counter(
            "waq_events",
            "Events this worker's pump read from the stream to copy to subscriptions, by type "
            "(all events emitted: the gateway's waq_events_emitted).",
            ["type"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "waq_webhook_deliveries",
            "Webhook requests by subscription and outcome (delivered, retry, refused, "
            "exhausted, gone).",
            ["subscription", "outcome"],
            registry=self.registry,
        )
        self.webhook_events = Counter(
            "waq_webhook_events_delivered",
            "Events delivered to webhook subscriptions, by subscription and event type.",
            ["subscription", "type"],
            registry=self.registry,
        )
        self.webhook_event_age = Histogram(
            "waq_webhook_event_age_seconds",
            "From an event's emission to its delivery (retries and batch windows included).",
            buckets=_AGE_BUCKETS,
            registry=self.registry,
        )
        self.webhook_latency = Histogram(
            "waq_webhook_request_seconds",
            "How long subscribers took to answer a webhook request.",
            ["subscription"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def webhook_delivery(
        self,
        subscription: str,
        outcome: str,
        latency_s: float,
        *,
        delivered: Iterable[tuple[str, float]] = (),
    ) -> None:
        """Count one webhook request and its latency.

        ``delivered``: the type and age (s since emitted) of each event it delivered.
        """
        self.webhook_deliveries.labels(subscription=subscription, outcome=outcome).inc()
        self.webhook_latency.labels(subscription=subscription).observe(latency_s)
        for type_, age_s in delivered:
            self.webhook_events.labels(subscription=subscription, type=type_).inc()
            self.webhook_event_age.observe(age_s)

    def outcome(self, outcome: str, code: object = None) -> None:
        """Count one attempt's outcome."""
        self.outcomes.labels(outcome=outcome, code="" if code is None else str(code)).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104  # scraped from outside
        """Serve ``/metrics`` on ``port`` from a daemon thread (prometheus-client's own)."""
        start_http_server(port, addr=host, registry=self.registry)
