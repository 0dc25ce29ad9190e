"""Delivery: lane jobs, the Graph API client, Meta's error table, backoff, the arq worker."""

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
from worker.graph import GraphClient, HealthStatus, PhoneNumberInfo, SendResult
from worker.lane import LaneJob, LaneReport, RedisClock
from worker.metrics import WorkerMetrics
from worker.overview import NumberOverview, NumberState, Overview, read_overview
from worker.template_rewrite import RewriteError, TemplateRewrite

__all__ = [
    "ERROR_TABLE",
    "Action",
    "AiohttpTransport",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterStats",
    "DeadLetterStore",
    "Delivery",
    "DeliveryConfig",
    "DeliveryError",
    "ErrorRule",
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
    "Overview",
    "PhoneNumberInfo",
    "RedisClock",
    "RewriteError",
    "Schedule",
    "SendResult",
    "Suggestion",
    "TemplateRewrite",
    "WorkerMetrics",
    "backoff_s",
    "pair_backoff_s",
    "read_overview",
    "rule_for",
]
