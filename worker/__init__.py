"""Delivery: lane jobs, the Graph API, Meta's error table, the arq worker, events out."""

from worker.aiohttp_transport import AiohttpTransport
from worker.backoff import backoff_s, pair_backoff_s
from worker.dead_letters import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStats,
    DeadLetterStore,
    MoveResult,
)
from worker.delivery import Delivery, DeliveryConfig
from worker.error_table import ERROR_TABLE, Action, ErrorRule, Schedule, Suggestion, rule_for
from worker.errors import (
    DeliveryError,
    GraphConnectionError,
    GraphError,
    GraphTimeout,
    GraphTransportError,
)
from worker.event_pump import EventPump
from worker.graph import GraphClient, HealthStatus, PhoneNumberInfo, SendResult
from worker.lane import LaneJob, LaneReport, RedisClock
from worker.metrics import WorkerMetrics
from worker.overview import NumberOverview, NumberState, Overview, read_overview
from worker.subscriptions import (
    DeadEvent,
    OutboxStats,
    Subscription,
    SubscriptionSpec,
    SubscriptionState,
    SubscriptionStore,
)
from worker.template_rewrite import RewriteError, TemplateRewrite
from worker.webhook_sender import WebhookConfig, WebhookSender

__all__ = [
    "ERROR_TABLE",
    "Action",
    "AiohttpTransport",
    "DeadEvent",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterStats",
    "DeadLetterStore",
    "Delivery",
    "DeliveryConfig",
    "DeliveryError",
    "ErrorRule",
    "EventPump",
    "GraphClient",
    "GraphConnectionError",
    "GraphError",
    "GraphTimeout",
    "GraphTransportError",
    "HealthStatus",
    "LaneJob",
    "LaneReport",
    "MoveResult",
    "NumberOverview",
    "NumberState",
    "OutboxStats",
    "Overview",
    "PhoneNumberInfo",
    "RedisClock",
    "RewriteError",
    "Schedule",
    "SendResult",
    "Subscription",
    "SubscriptionSpec",
    "SubscriptionState",
    "SubscriptionStore",
    "Suggestion",
    "TemplateRewrite",
    "WebhookConfig",
    "WebhookSender",
    "WorkerMetrics",
    "backoff_s",
    "pair_backoff_s",
    "read_overview",
    "rule_for",
]
