"""The gateway's configuration and its per-process collaborators (built at startup)."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from fastapi import Header, Request
from redis.asyncio import ConnectionPool

from gateway.conversations import ConversationStore
from gateway.errors import Forbidden, Unauthorized
from gateway.guard import DEFAULT_MAX_BODY_BYTES
from gateway.metrics import QueueMetrics
from gateway.webhooks import WebhookProcessor
from producer import keys
from producer.client import Producer, json_serializer, reconnecting
from producer.opt_outs import DEFAULT_OPT_IN_KEYWORDS, DEFAULT_OPT_OUT_KEYWORDS
from producer.status_store import StatusStore
from worker.dead_letters import DeadLetterStore
from worker.pauses import PauseStore
from worker.subscriptions import SubscriptionStore
from worker.windows import WindowStore

__all__ = [
    "GatewayConfig",
    "GatewayState",
    "gateway_state",
    "key_matches",
    "require_admin_key",
    "state_of",
]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs, from the settings (or a test)."""

    redis_url: str
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    app_secret: str | None = None
    verify_token: str | None = None
    default_phone_number_id: str | None = None
    queue_name: str = keys.DEFAULT_QUEUE
    retention_s: int = 7 * 24 * 3600
    window_margin_s: float = 60.0
    graph_base_url: str = "https://graph.facebook.com"
    default_mps: float = 80.0
    health_timeout_s: float = 15.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    conversation_key: str | None = None  # None: a random key kept in Redis per deployment
    opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT_KEYWORDS
    opt_in_keywords: tuple[str, ...] = DEFAULT_OPT_IN_KEYWORDS
    conversation_retention_s: int = 30 * 24 * 3600


@dataclass(slots=True)
class GatewayState:
    """One Redis pool and the stores over it, shared by every request of the process."""

    config: GatewayConfig
    redis: ArqRedis
    producer: Producer = field(init=False)
    statuses: StatusStore = field(init=False)
    windows: WindowStore = field(init=False)
    conversations: ConversationStore = field(init=False)
    dead_letters: DeadLetterStore = field(init=False)
    subscriptions: SubscriptionStore = field(init=False)
    webhooks: WebhookProcessor = field(init=False)
    metrics: QueueMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.producer = Producer(
            self.redis,
            queue_name=self.config.queue_name,
            retention_s=self.config.retention_s,
            conversation_key=self.config.conversation_key,
        )
        self.statuses = self.producer.statuses
        self.windows = WindowStore(self.redis, margin_s=self.config.window_margin_s)
        self.conversations = ConversationStore(
            self.redis, self.windows, key=self.config.conversation_key,
            retention_s=self.config.conversation_retention_s,
        )  # fmt: skip
        self.dead_letters = DeadLetterStore(
            self.redis, self.statuses, queue_name=self.config.queue_name
        )
        self.subscriptions = SubscriptionStore(self.redis, queue_name=self.config.queue_name)
        self.webhooks = WebhookProcessor(
            self.redis,
            statuses=self.statuses,
            windows=self.windows,
            conversations=self.conversations,
            dead_letters=self.dead_letters,
            pauses=PauseStore(self.redis),
            opt_out_keywords=self.config.opt_out_keywords,
            opt_in_keywords=self.config.opt_in_keywords,
        )
        self.metrics = QueueMetrics(
            self.redis, queue_name=self.config.queue_name, default_mps=self.config.default_mps
        )

    @classmethod
    def connect(cls, config: GatewayConfig) -> GatewayState:
        """Open the Redis pool (arq's client, so the health job's result can be awaited)."""
        # ~7 s of retries (6 attempts, 0.2 s doubling to 2 s) ride out a Redis restart; past
        # that a caller gets 503 + Retry-After, sooner than an HTTP client's own timeout. A
        # Redis that accepts connections but does not answer (frozen) is a 503 after 1 s.
        pool = ConnectionPool.from_url(
            config.redis_url,
            **reconnecting(attempts=6, socket_timeout_s=1.0, retry_timeouts=False),
        )
        redis = ArqRedis(
            connection_pool=pool,
            job_serializer=json_serializer,
            job_deserializer=json.loads,
            default_queue_name=config.queue_name,
        )
        return cls(config=config, redis=redis)

    async def aclose(self) -> None:
        """Close the Redis pool (given explicitly, so redis-py would leave it open)."""
        await self.redis.aclose(close_connection_pool=True)


def state_of(request: Request) -> GatewayState:
    """The process's state, from a request."""
    state: GatewayState = request.app.state.gateway
    return state


# The dependencies are ``async def`` though they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, and those hand-offs were a third of the gateway's CPU per
# single-message request (py-spy: run_in_threadpool, Queue.put, Condition.notify).


async def gateway_state(request: Request) -> GatewayState:
    """The process's state (a FastAPI dependency)."""
    return state_of(request)


def key_matches(given: str | None, keys_: tuple[str, ...]) -> bool:
    """Whether ``given`` is one of ``keys_``, compared in constant time (no prefix leaks)."""
    return given is not None and any(hmac.compare_digest(given.encode(), k.encode()) for k in keys_)


async def require_admin_key(request: Request, x_api_key: str | None = Header(default=None)) -> None:
    """Refuse a request without an admin key (WAQ_ADMIN_KEYS): operators' routes."""
    config = state_of(request).config
    if key_matches(x_api_key, config.admin_keys):
        return
    if key_matches(x_api_key, config.api_keys):
        raise Forbidden(
            "this route needs an admin key (WAQ_ADMIN_KEYS), not an API key",
            code="admin_key_required",
            field="X-API-Key",
        )
    raise Unauthorized("missing or unknown X-API-Key", code="unauthorized", field="X-API-Key")
