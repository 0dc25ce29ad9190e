"""The arq worker: its jobs (lanes, webhook deliveries), the event pump, sweeps and probes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import structlog
from arq import cron
from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.worker import Retry, Worker, func
from pydantic import SecretStr
from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producer import keys
from producer.client import json_serializer, reconnecting
from producer.status_store import StatusStore
from producer.template_catalog import CatalogTemplate, TemplateCatalog
from producer.transition_scripts import WINDOW_CLOSING
from producer.transitions import LANE_FUNCTION, ClaimLimits, Transitions
from worker.aiohttp_transport import AiohttpTransport
from worker.backoff import backoff_s
from worker.delivery import Delivery, DeliveryConfig
from worker.errors import DeliveryError, GraphError, GraphTransportError
from worker.event_pump import EventPump
from worker.graph import DEFAULT_GRAPH_API_VERSION, DEFAULT_GRAPH_BASE_URL, GraphClient
from worker.lane import LaneJob
from worker.limits import RateConfig, RateLimiter
from worker.metrics import WorkerMetrics
from worker.pauses import PauseStore
from worker.stats import record_depth
from worker.subscriptions import DELIVER_FUNCTION, SubscriptionStore
from worker.webhook_sender import WebhookConfig, WebhookSender
from worker.windows import WINDOW_S

__all__ = [
    "HEALTH_FUNCTION",
    "HEALTH_KEY_SUFFIX",
    "MARK_READ_FUNCTION",
    "SYNC_TEMPLATES_FUNCTION",
    "WorkerConfig",
    "create_worker",
    "deliver_webhooks",
    "mark_read",
    "phone_number_health",
    "probe_paused_numbers",
    "run_worker",
    "send_lane",
    "sweep_events",
    "sweep_lanes",
    "sweep_retention",
    "sync_templates",
]

HEALTH_FUNCTION = "phone_number_health"
"""The job the gateway enqueues to read a number's health: only workers hold the token."""

SYNC_TEMPLATES_FUNCTION = "sync_templates"
"""The job `waq templates sync` enqueues (and the cron job workers run) to refresh the catalog."""

MARK_READ_FUNCTION = "mark_read"
"""The job the gateway enqueues, ahead of every send, to send a read receipt."""

HEALTH_KEY_SUFFIX = ":health-check"
"""arq's liveness key is the queue name plus this; workers refresh it every 10 s."""

log = structlog.get_logger("waq.worker")

# waq counts attempts itself (only calls that reached Meta or failed to): waiting for a
# paused number, or arq re-running a job after a crash, must not use up a message's tries.
# arq's own limit would fail a job silently, leaving the message in no state, so it is set
# out of reach; a lane job comes back through Retry and dead-letters by its own count.
_ARQ_MAX_TRIES = 1_000_000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker process needs, from the settings (or a test)."""

    redis_url: str
    access_token: SecretStr
    graph_base_url: str = DEFAULT_GRAPH_BASE_URL
    graph_api_version: str = DEFAULT_GRAPH_API_VERSION
    graph_timeout_s: float = 15.0
    queue_name: str = keys.DEFAULT_QUEUE
    retention_s: int = 7 * 24 * 3600
    window_margin_s: float = 60.0
    concurrency: int = 200  # Graph calls open at once (the connection pool), lane jobs at once
    health_probe_s: int | None = 60  # None: no probe (tests drive it by hand)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    limits: RateConfig = field(default_factory=RateConfig)
    burst: bool = False
    max_burst_jobs: int = -1
    poll_delay_s: float = 0.05
    transport: httpx.AsyncBaseTransport | None = None
    http_client: Literal["httpx", "aiohttp"] = "aiohttp"  # a transport above wins
    metrics: WorkerMetrics | None = None
    metrics_port: int | None = None  # serve /metrics here (run_worker); None: not served
    redis_attempts: int = 20  # a command's tries through a Redis outage (run_worker: 8)
    waba_id: str | None = None  # the account whose templates are synced (None: no sync)
    template_sync_s: int | None = 900  # how often workers sync them; None: never by cron
    lane_sweep_s: int | None = 10  # how often a worker looks for lanes without a job
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    events_maxlen: int = 1_000_000  # the events stream's length, trimmed once fanned out
    event_pump: bool = True  # run the pump beside the jobs (False: tests drive it)
    window_closing_lead_s: float = 3600.0  # conversation.window_closing this long before
    dlq_retention_s: float = 30 * 24 * 3600  # dead letters older than this are dropped


def claim_limits(config: WorkerConfig) -> ClaimLimits:
    """What one claim may take, from the worker's delivery, rate and window settings."""
    d, r = config.delivery, config.limits
    return ClaimLimits(
        max_batch=d.max_batch,
        horizon_s=d.horizon_s,
        default_mps=r.default_mps,
        safety=r.safety,
        # The pair's spacing gets the same margin as the number's: arrival jitter must not
        # bring a message in before Meta's bucket has refilled.
        pair_interval_s=r.pair_interval_s * (1 + r.safety),
        pair_burst=r.pair_burst,
        recover_s=r.recover_s,
        reconcile_wait_s=d.reconcile_wait_s,
        reconcile_check_s=d.reconcile_check_s,
        # A claimed message comes due again (a crashed worker's) only after any send of it
        # could have ended: its slot, the Graph timeout, and a margin.
        claim_deadline_s=d.horizon_s + config.graph_timeout_s + 5,
        ambiguous_policy=d.ambiguous_policy,
        window_s=WINDOW_S - config.window_margin_s,
        bulk_share=r.bulk_share,
    )


async def send_lane(ctx: dict[str, Any], *, phone_number_id: str, token: str) -> dict[str, Any]:
    """Drain one sender's lane for a time slice (the arq job); comes back through ``Retry``."""
    lane: LaneJob = ctx["lane"]
    structlog.contextvars.bind_contextvars(phone_number_id=phone_number_id, lane_token=token)
    try:
        report = await lane.run(phone_number_id, token)
        return dataclasses.asdict(report)
    except Retry:
        raise
    except Exception:
        # A bug or a Redis outage: arq would drop the job, and the lane with it. Come back
        # later instead; what the run claimed is reconciled after its claim deadline.
        with contextlib.suppress(Exception):  # a broken log sink must not drop the job
            log.exception("lane.error")
        raise Retry(defer=backoff_s(ctx["job_try"], cap_s=30)) from None
    finally:
        structlog.contextvars.clear_contextvars()


async def sweep_lanes(ctx: dict[str, Any]) -> dict[str, str]:
    """Start a job for any lane with messages and no job (its starter died in between).

    Also writes the queue depth (each lane's pending count, summed) into the stats bucket
    the console charts.
    """
    transitions: Transitions = ctx["transitions"]
    redis = ctx["redis"]
    started: dict[str, str] = {}
    senders = [
        raw.decode() if isinstance(raw, bytes) else str(raw)
        for raw in await redis.smembers(keys.SENDERS)
    ]
    for phone_number_id in senders:
        if (token := await transitions.wake(phone_number_id)) is not None:
            log.warning("lane.swept", phone_number_id=phone_number_id, token=token)
            started[phone_number_id] = token
    async with redis.pipeline(transaction=False) as pipe:
        for phone_number_id in senders:
            pipe.hget(keys.lane_job(phone_number_id), "pending")
        pending = await pipe.execute()
    await record_depth(redis, sum(int(n or 0) for n in pending))
    return started


async def deliver_webhooks(
    ctx: dict[str, Any], *, subscription_id: str, token: str
) -> dict[str, Any]:
    """Deliver one subscription's outbox for a time slice (the arq job); comes back by ``Retry``."""
    sender: WebhookSender = ctx["webhook_sender"]
    try:
        return await sender.run(subscription_id, token)
    except Retry:
        raise
    except Exception:
        with contextlib.suppress(Exception):
            log.exception("webhooks.error", subscription_id=subscription_id)
        raise Retry(defer=backoff_s(ctx["job_try"], cap_s=30)) from None


async def sweep_events(ctx: dict[str, Any]) -> dict[str, Any]:
    """Emit the events of windows closing soon; start outbox jobs that went missing.

    A delivery job goes missing when its starter died in between, or arq dropped it.
    """
    config: WorkerConfig = ctx["config"]
    store: SubscriptionStore = ctx["subscriptions"]
    closing = ctx["redis"].register_script(WINDOW_CLOSING)
    emitted, _ = await closing(
        keys=[keys.WINDOWS_CLOSING], args=[time.time(), config.window_closing_lead_s, 1000]
    )
    started = {}
    for subscription in await store.all():
        if (token := await store.wake(subscription.id)) is not None:
            log.warning("webhooks.swept", subscription_id=subscription.id, token=token)
            started[subscription.id] = token
    return {"window_closing": int(emitted), "started": started}


async def sweep_retention(ctx: dict[str, Any]) -> dict[str, int]:
    """Drop dead letters older than the retention, with their dead messages' records.

    In bounded chunks (``Transitions.expire_dead_letters``): a backlog of a million old
    entries never holds Redis for more than a chunk.
    """
    config: WorkerConfig = ctx["config"]
    transitions: Transitions = ctx["transitions"]
    dropped = await transitions.expire_dead_letters(config.dlq_retention_s)
    if dropped:
        log.info("dlq.expired", dropped=dropped, retention_s=config.dlq_retention_s)
    return {"dead_letters_dropped": dropped}


async def probe_paused_numbers(ctx: dict[str, Any]) -> dict[str, str]:
    """Resume each paused number whose health Meta now reports as able to send."""
    pauses: PauseStore = ctx["pauses"]
    graph: GraphClient = ctx["graph"]
    results: dict[str, str] = {}
    for phone_number_id, pause in (await pauses.all()).items():
        if pause.by == "operator":
            results[phone_number_id] = "paused by an operator"
            continue
        try:
            info = await graph.phone_number(phone_number_id)
        except DeliveryError as exc:
            results[phone_number_id] = f"still failing: {exc.code}"
            continue
        if info.can_send:
            await pauses.resume(phone_number_id, by="health probe")
            await ctx["transitions"].wake(phone_number_id, replace=True)
            log.warning("alert.number_resumed", phone_number_id=phone_number_id, by="health probe")
            results[phone_number_id] = "resumed"
        else:
            results[phone_number_id] = "still blocked"
    return results


async def sync_templates(ctx: dict[str, Any]) -> dict[str, Any]:
    """Read the account's templates from Meta into the catalog producers check against."""
    graph: GraphClient = ctx["graph"]
    waba_id: str | None = ctx["waba_id"]
    if waba_id is None:
        return {"ok": False, "error": {"code": "no_waba_id", "title": "WAQ_WABA_ID is not set"}}
    try:
        listed = await graph.message_templates(waba_id)
    except (GraphError, GraphTransportError) as exc:
        log.warning("templates.sync_failed", error=exc.as_dict())
        return {"ok": False, "error": exc.as_dict()}
    count = await TemplateCatalog(ctx["redis"]).replace(
        CatalogTemplate.from_meta(item) for item in listed
    )
    log.info("templates.synced", templates=count)
    return {"ok": True, "templates": count}


async def mark_read(
    ctx: dict[str, Any], *, phone_number_id: str, message_id: str, typing_indicator: bool
) -> dict[str, Any]:
    """Send a read receipt at once, for the gateway's Graph-compatible door (it waits)."""
    graph: GraphClient = ctx["graph"]
    try:
        await graph.mark_read(phone_number_id, message_id, typing_indicator=typing_indicator)
    except (GraphError, GraphTransportError) as exc:
        return {"ok": False, "error": exc.as_dict()}
    return {"ok": True}


async def phone_number_health(ctx: dict[str, Any], *, phone_number_id: str) -> dict[str, Any]:
    """Read a number's status and health through the Graph API, for the gateway's health check."""
    graph: GraphClient = ctx["graph"]
    try:
        info = await graph.phone_number(phone_number_id)
    except DeliveryError as exc:
        error = (
            exc.as_dict()
            if isinstance(exc, GraphError | GraphTransportError)
            else {"code": exc.code}
        )
        return {"ok": False, "error": error}
    return {"ok": True, "phone_number": info.model_dump(mode="json", exclude_none=True)}


def _log_task_stacks() -> None:
    """SIGUSR2: log every asyncio task's stack, for a worker that will not stop or move.

    py-spy shows only the event loop waiting; the coroutines it waits on show here.
    """
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=12)
        where = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in frames]
        log.warning("worker.task_stack", task=task.get_name(), coro=repr(task.get_coro()),
                    stack=where)  # fmt: skip


def _probe_seconds(every_s: int) -> set[int]:
    return set(range(0, 60, every_s)) if every_s < 60 else {0}


def run_worker(
    config: WorkerConfig,
    *,
    max_backoff_s: float = 5.0,
    redis_alive: Callable[[], bool] | None = None,
) -> None:
    """Run a worker until a signal stops it, starting it again whenever Redis goes away.

    redis-py retries commands, but not the connection a pool hands out, and arq's loop
    exits on that error. Rather than patch arq (in maintenance mode), the worker is simply
    rebuilt with backoff: its interrupted sends are in ``sending`` and get reconciled.

    A SIGINT or SIGTERM always ends it, Redis up or down: arq's handler reports the signal
    (``on_stop``) before its shutdown fails on the missing Redis, and no new worker is
    built after it. ``redis_alive`` (``waq dev``: is its embedded Valkey still running?)
    ends it with an error instead of waiting for a server that will not come back.
    """
    if config.metrics is None:
        config = dataclasses.replace(config, metrics=WorkerMetrics())
    if config.metrics_port is not None and config.metrics is not None:
        config.metrics.serve(config.metrics_port)
        log.info("worker.metrics", port=config.metrics_port)
    # Shorter than a producer's retries: past them the worker is rebuilt below anyway, and
    # a signalled worker's shutdown waits for them when Redis is gone.
    config = dataclasses.replace(config, redis_attempts=min(config.redis_attempts, 8))
    stop: list[signal.Signals] = []
    backoff_s = 0.5
    while True:
        worker = create_worker(config)
        worker.on_stop = _stopping(worker, stop)
        try:
            worker.run()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if stop:
                log.warning("worker.stopped", signal=stop[0].name, redis="unreachable")
                return
            if redis_alive is not None and not redis_alive():
                log.error("worker.redis_gone", error=str(exc))  # noqa: TRY400 - no traceback
                raise SystemExit(1) from None
            log.warning("worker.redis_unreachable", error=str(exc), restart_in_s=backoff_s)
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, max_backoff_s)
        else:
            return


def _stopping(worker: Worker, stop: list[signal.Signals]) -> Callable[[signal.Signals], None]:
    """arq's ``on_stop``: note the signal, and make sure the cancel it sent takes.

    arq cancels its main task once. A test's py-spy dump and Redis MONITOR showed a single
    cancel lost in a busy poll (the loop went on polling every 10 ms), so the worker stops
    taking jobs and the cancel is repeated each second until the loop has ended.
    """

    def on_stop(sig: signal.Signals) -> None:
        stop.append(sig)
        worker.allow_pick_jobs = False

        def cancel_again() -> None:
            if worker.main_task is not None and not worker.main_task.done():
                worker.main_task.cancel()
                worker.loop.call_later(1.0, cancel_again)

        worker.loop.call_later(1.0, cancel_again)

    return on_stop


def create_worker(config: WorkerConfig) -> Worker:
    """An arq ``Worker`` for lane jobs, with JSON jobs and one Graph client per process."""

    async def startup(ctx: dict[str, Any]) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals: not POSIX
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _log_task_stacks)
        redis = ctx["redis"]
        statuses = StatusStore(redis, retention_s=config.retention_s)
        connections = max(config.concurrency, 1)
        graph = GraphClient(
            access_token=config.access_token,
            base_url=config.graph_base_url,
            api_version=config.graph_api_version,
            timeout_s=config.graph_timeout_s,
            max_connections=connections,
            transport=config.transport
            or (
                AiohttpTransport(max_connections=connections)
                if config.http_client == "aiohttp"
                else None
            ),
        )
        pauses = PauseStore(redis)
        limiter = RateLimiter(redis, config.limits)
        transitions = Transitions(
            redis, retention_s=config.retention_s, queue_name=config.queue_name
        )
        subscriptions = SubscriptionStore(redis, queue_name=config.queue_name)
        webhook_client = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        pump = EventPump(redis, subscriptions, maxlen=config.events_maxlen, metrics=config.metrics)
        ctx.update(
            config=config,
            graph=graph,
            pauses=pauses,
            transitions=transitions,
            subscriptions=subscriptions,
            webhook_client=webhook_client,
            webhook_sender=WebhookSender(
                redis, subscriptions, webhook_client, config.webhooks, config.metrics
            ),
            pump=pump,
            pump_task=asyncio.create_task(pump.run()) if config.event_pump else None,
            waba_id=config.waba_id,
            lane=LaneJob(
                transitions=transitions,
                delivery=Delivery(
                    graph=graph,
                    statuses=statuses,
                    pauses=pauses,
                    limiter=limiter,
                    config=config.delivery,
                    metrics=config.metrics,
                ),
                limiter=limiter,
                limits=claim_limits(config),
                config=config.delivery,
                concurrency=connections,
            ),
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        pump: EventPump | None = ctx.get("pump")
        if pump is not None:
            await pump.stop(ctx.get("pump_task"))
        graph: GraphClient | None = ctx.get("graph")
        if graph is not None:
            await graph.aclose()
        webhook_client: httpx.AsyncClient | None = ctx.get("webhook_client")
        if webhook_client is not None:
            await webhook_client.aclose()

    cron_jobs: list[CronJob] = []
    if config.lane_sweep_s is not None:
        seconds = _probe_seconds(config.lane_sweep_s)
        cron_jobs.append(cron(sweep_lanes, second=seconds, run_at_startup=True))
        cron_jobs.append(cron(sweep_events, second=seconds, run_at_startup=True))
        cron_jobs.append(cron(sweep_retention, second=seconds, run_at_startup=True))
    if config.health_probe_s is not None:
        seconds = _probe_seconds(config.health_probe_s)
        cron_jobs.append(cron(probe_paused_numbers, second=seconds, run_at_startup=False))
    if config.waba_id is not None and config.template_sync_s is not None:
        every_min = max(1, config.template_sync_s // 60)
        cron_jobs.append(
            cron(
                sync_templates,
                name="cron:sync_templates",
                minute=set(range(0, 60, every_min)) if every_min < 60 else {0},
                second=0,
                run_at_startup=True,
            )
        )
    return Worker(
        functions=[
            func(send_lane, name=LANE_FUNCTION, max_tries=_ARQ_MAX_TRIES),
            func(deliver_webhooks, name=DELIVER_FUNCTION, max_tries=_ARQ_MAX_TRIES),
            # The gateway waits for this result, so it is kept briefly.
            func(phone_number_health, name=HEALTH_FUNCTION, max_tries=1, keep_result=120),
            func(mark_read, name=MARK_READ_FUNCTION, max_tries=1, keep_result=60),
            func(sync_templates, name=SYNC_TEMPLATES_FUNCTION, max_tries=1, keep_result=120),
        ],
        cron_jobs=cron_jobs,
        queue_name=config.queue_name,
        # The pool writes jobs too (cron jobs, retries): without the serializers arq pickles
        # them, and the worker, reading JSON, cannot run them.
        # (ArqRedis.from_url would hand these to the connection pool, not to arq.)
        redis_pool=ArqRedis(
            ConnectionPool.from_url(
                config.redis_url, **reconnecting(attempts=config.redis_attempts)
            ),
            job_serializer=json_serializer,
            job_deserializer=json.loads,
            default_queue_name=config.queue_name,
        ),
        burst=config.burst,
        max_burst_jobs=config.max_burst_jobs,
        poll_delay=config.poll_delay_s,
        max_jobs=config.concurrency,
        max_tries=_ARQ_MAX_TRIES,
        # A lane job runs for its time slice, then finishes the sends in flight (each bounded
        # by the Graph timeout after a slot <= horizon away). arq leases a running job for
        # job_timeout + 10 s: how long a SIGKILLed worker's lane waits for another worker.
        job_timeout=config.delivery.slice_s
        + config.delivery.horizon_s
        + config.graph_timeout_s
        + 5,
        # SIGTERM: stop taking jobs, let in-flight sends finish and settle their outcomes.
        # arq's default (0) cancels them mid-call and runs them again.
        job_completion_wait=int(config.delivery.slice_s + config.graph_timeout_s + 5),
        keep_result=0,
        on_startup=startup,
        on_shutdown=shutdown,
        job_serializer=json_serializer,
        job_deserializer=json.loads,
        handle_signals=not config.burst,
        health_check_interval=10,
    )
