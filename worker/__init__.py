"""Delivery: the Graph API client, Meta's error table, backoff, and the arq worker."""

from worker.backoff import backoff_s, pair_backoff_s
from worker.error_table import ERROR_TABLE, Action, ErrorRule, Schedule, Suggestion, rule_for
from worker.errors import (
    DeliveryError,
    GraphConnectionError,
    GraphError,
    GraphTimeout,
    GraphTransportError,
)
from worker.graph import GraphClient, HealthStatus, PhoneNumberInfo, SendResult

__all__ = [
    "ERROR_TABLE",
    "Action",
    "DeliveryError",
    "ErrorRule",
    "GraphClient",
    "GraphConnectionError",
    "GraphError",
    "GraphTimeout",
    "GraphTransportError",
    "HealthStatus",
    "PhoneNumberInfo",
    "Schedule",
    "SendResult",
    "Suggestion",
    "backoff_s",
    "pair_backoff_s",
    "rule_for",
]
