"""waq's one settings class, read from ``WAQ_*`` environment variables in entrypoints only.

Everything below the entrypoints receives plain values through constructors or arq's ``ctx``.
docs/configuration.md documents every variable; a test keeps the two in step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, RedisDsn, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from producer.opt_outs import DEFAULT_OPT_IN_KEYWORDS, DEFAULT_OPT_OUT_KEYWORDS
from worker.webhook_sender import DEFAULT_RETRY_SCHEDULE_S
from worker.windows import WINDOW_S

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Configuration for every waq process (worker, gateway, sandbox, CLI)."""

    model_config = SettingsConfigDict(env_prefix="WAQ_", extra="ignore", frozen=True)

    redis_url: RedisDsn = Field(
        default=RedisDsn("redis://localhost:6379/0"),
        description="Redis (or Valkey) shared by producers, workers and the gateway.",
    )
    graph_base_url: str = Field(
        default="https://graph.facebook.com",
        description="Graph API host: Meta's, a proxy's, or the sandbox's URL.",
    )
    graph_api_version: str = Field(
        default="v24.0", pattern=r"^v\d+\.\d+$", description="Pinned Graph API version."
    )
    access_token: SecretStr | None = Field(
        default=None, description="Graph API bearer token (system-user token). Workers only."
    )
    app_secret: SecretStr | None = Field(
        default=None, description="Meta app secret: checks webhook X-Hub-Signature-256."
    )
    verify_token: SecretStr | None = Field(
        default=None, description="Token Meta echoes in the webhook verification handshake."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated keys accepted in X-API-Key for sends."
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated keys for the admin API and console."
    )
    default_phone_number_id: str | None = Field(
        default=None, description="Sender used when a request names none."
    )
    graph_timeout_s: float = Field(
        default=15.0, gt=0, description="Seconds to wait for Meta's answer to one request."
    )
    max_attempts: int = Field(
        default=6, ge=1, le=50, description="Calls to Meta per message before it is dead-lettered."
    )
    backoff_base_s: float = Field(
        default=1.0, gt=0, description="First retry's backoff ceiling; doubles per attempt."
    )
    backoff_cap_s: float = Field(
        default=300.0, gt=0, description="Largest backoff between retries."
    )
    window_margin_s: float = Field(
        default=60.0, ge=0, description="Treat a service window as closed this long before 24 h."
    )
    status_retention_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long message status records are kept."
    )
    dlq_retention_s: int = Field(
        default=30 * 24 * 3600,
        ge=60,
        description="How long dead letters (and their messages' records) are kept before the "
        "workers' sweep drops them; `waq dlq export` first to keep them longer.",
    )
    conversation_retention_s: int = Field(
        default=30 * 24 * 3600,
        ge=WINDOW_S,
        description="How long a conversation record is kept after the customer's last message.",
    )
    pause_check_s: float = Field(
        default=30.0, gt=0, description="How often jobs of a paused number look again."
    )
    health_probe_s: int = Field(
        default=60, ge=5, description="How often workers probe paused numbers' health."
    )
    default_mps: float = Field(
        default=80.0, gt=0, description="Messages per second per number, unless set by waq limits."
    )
    pair_interval_s: float = Field(
        default=6.0, gt=0, description="Seconds between messages to one customer (Meta: 6)."
    )
    pair_burst: int = Field(
        default=45, ge=1, description="Messages to one customer at once before spacing (Meta: 45)."
    )
    opt_out_keywords: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_OPT_OUT_KEYWORDS),
        description="Comma-separated words that, as a customer's whole message, opt them out "
        "of the sender's marketing (any case).",
    )
    opt_in_keywords: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_OPT_IN_KEYWORDS),
        description="Comma-separated words that opt a customer back in.",
    )
    bulk_share: float = Field(
        default=0.2,
        ge=0.01,
        le=1.0,
        description="The least share of a number's sends that bulk traffic (priority bulk, "
        "broadcasts) gets while interactive messages wait.",
    )
    rate_safety: float = Field(
        default=0.03, ge=0, lt=0.5, description="Fraction below each number's limit waq aims at."
    )
    throttle_recover_s: float = Field(
        default=60.0, gt=0, description="Seconds for a rate slowed by Meta to recover fully."
    )
    reconcile_wait_s: float = Field(
        default=60.0, ge=0, description="How long an unknown send waits for Meta's status webhook."
    )
    ambiguous_policy: Literal["resend", "dead_letter"] = Field(
        default="resend", description="After that wait: resend, or dead-letter as ambiguous."
    )
    worker_concurrency: int = Field(
        default=200,
        ge=1,
        description="Graph calls one worker process has open at once (its connection pool), "
        "and lane jobs it runs at once.",
    )
    http_client: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description="The transport under the worker's httpx client: aiohttp's (about a third "
        "of the CPU per call) or httpx's own pool.",
    )
    lane_batch: int = Field(
        default=200, ge=1, le=10_000, description="Messages one lane claim takes at most."
    )
    lane_slice_s: float = Field(
        default=5.0,
        gt=0,
        description="A lane job yields after this long, so many senders share few workers.",
    )
    lane_sweep_s: int = Field(
        default=10,
        ge=1,
        le=60,
        description="How often a worker looks for lanes with messages and no job.",
    )
    queue_name: str = Field(
        default="waq:queue",
        description="The arq queue of lane jobs (and health, read-receipt, template jobs).",
    )
    waba_id: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,32}$",
        description="WhatsApp Business Account id: its templates are synced and checked.",
    )
    template_sync_s: int = Field(
        default=900, ge=60, description="How often workers sync the templates (with a WABA id)."
    )
    conversation_key: SecretStr | None = Field(
        default=None,
        description="Key of conversation ids (HMAC); unset: a random one kept in Redis.",
    )
    events_maxlen: int = Field(
        default=1_000_000,
        ge=1000,
        description="Events the stream keeps for its readers (trimmed once every webhook "
        "subscription has its copy).",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=60, description="Seconds a webhook receiver has to answer."
    )
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S),
        description="Comma-separated waits (s) before each retry of a webhook delivery; "
        "past the last, the subscription is paused (default Svix's, about 28 h).",
    )
    window_closing_lead_s: float = Field(
        default=3600.0,
        gt=0,
        description="conversation.window_closing is emitted this long before a window closes.",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body the gateway reads (413 past it); 8 MiB.",
    )
    gateway_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The gateway's base URL, for `waq loadtest --via gateway`.",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of a worker's Prometheus /metrics (unset: not served).",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged."
    )

    @field_validator(
        "access_token",
        "app_secret",
        "verify_token",
        "conversation_key",
        "default_phone_number_id",
        "waba_id",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(
        "api_keys",
        "admin_keys",
        "webhook_retry_schedule",
        "opt_out_keywords",
        "opt_in_keywords",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
