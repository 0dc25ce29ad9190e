"""The HTTP door: send API (Kapso-compatible), Meta's webhooks, message status, health check."""

from gateway.app import create_app
from gateway.conversations import Conversation, ConversationStore, conversation_id_for
from gateway.errors import ApiError, Conflict, NotFound, Unauthorized
from gateway.health import HealthReport, HealthState, run_health_check
from gateway.kapso import kapso_to_meta
from gateway.state import GatewayConfig, GatewayState
from gateway.webhooks import WebhookProcessor, WebhookResult, verify_signature

__all__ = [
    "ApiError",
    "Conflict",
    "Conversation",
    "ConversationStore",
    "GatewayConfig",
    "GatewayState",
    "HealthReport",
    "HealthState",
    "NotFound",
    "Unauthorized",
    "WebhookProcessor",
    "WebhookResult",
    "conversation_id_for",
    "create_app",
    "kapso_to_meta",
    "run_health_check",
    "verify_signature",
]
