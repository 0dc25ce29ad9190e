"""The ``waq`` command: one front for the worker, the sandbox, the demo and the operators."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import SecretStr

from gateway import GatewayConfig, GatewayState, HealthReport, create_app, run_health_check
from producer.recipient import normalize_recipient
from sandbox import (
    DEFAULT_PHONE_NUMBER_ID,
    BackgroundServer,
    NumberConfig,
    SandboxConfig,
    SandboxServer,
    WindowErrors,
    sender_ids,
)
from sandbox.webhooks import WABA_ID
from waq.broadcast import broadcast
from waq.cancel import cancel
from waq.demo import run_demo
from waq.dlq import dlq
from waq.embedded import redis_for
from waq.heap import freeze_startup_heap
from waq.loadtest import LoadTestRefused
from waq.loadtest_report import render_html
from waq.loadtest_run import LoadRun, Via
from waq.ops import limits, pause, resume, status
from waq.optouts import optouts
from waq.settings import Settings
from waq.templates import templates
from waq.webhooks import events, webhooks
from worker.delivery import DeliveryConfig
from worker.limits import RateConfig
from worker.logs import configure_logging
from worker.runner import WorkerConfig, run_worker
from worker.webhook_sender import WebhookConfig

app = typer.Typer(
    name="waq",
    help="WhatsApp send pipeline: validate, queue, deliver in order, dead-letter what cannot go.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """WhatsApp send pipeline: validate, queue, deliver in order, dead-letter what cannot go."""


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    webhook_url: Annotated[str | None, typer.Option(help="Where to post signed webhooks.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fault and failure draws.")] = 0,
    window_errors: Annotated[
        WindowErrors, typer.Option(help="How closed-window sends fail: sync, async or mixed.")
    ] = WindowErrors.SYNC,
    numbers: Annotated[
        int, typer.Option(help="Business numbers to serve: the default id and the ones after it.")
    ] = 1,
) -> None:
    """Serve a fake Meta Graph API (and its webhooks) for tests, demos and load tests.

    It accepts WAQ_ACCESS_TOKEN as the bearer token and signs webhooks with WAQ_APP_SECRET
    (the sandbox's well-known defaults when unset).
    """
    settings = Settings()
    config = SandboxConfig(
        webhook_url=webhook_url,
        seed=seed,
        window_errors=window_errors,
        numbers={number: NumberConfig() for number in sender_ids(max(1, numbers))},
    )
    if settings.access_token is not None:
        config.access_token = settings.access_token.get_secret_value()
    if settings.app_secret is not None:
        config.app_secret = settings.app_secret.get_secret_value()
    server = SandboxServer(config, host=host, port=port)
    version = settings.graph_api_version
    typer.echo(f"sandbox: Graph API at {server.url}/{version}, control at {server.url}/_sandbox")
    server.run_process()


def main() -> None:
    """Entry point for ``python -m waq``."""
    app()


def _configure(settings: Settings, *, level: str | None = None) -> None:
    held = (settings.access_token, settings.app_secret, settings.verify_token)
    keys = (*settings.api_keys, *settings.admin_keys)
    secrets = [s.get_secret_value() for s in (*held, *keys) if s is not None]
    configure_logging(
        log_format=settings.log_format, level=level or settings.log_level, secrets=secrets
    )


def _worker_config(settings: Settings, redis_url: str, **overrides: Any) -> WorkerConfig:
    """The worker's config from the settings, with ``overrides`` taking precedence."""
    if settings.access_token is None:
        typer.echo(
            "error: WAQ_ACCESS_TOKEN is not set (workers need the Graph access token)", err=True
        )
        raise typer.Exit(2)
    config = WorkerConfig(
        redis_url=redis_url,
        access_token=settings.access_token,
        graph_base_url=settings.graph_base_url,
        graph_api_version=settings.graph_api_version,
        graph_timeout_s=settings.graph_timeout_s,
        queue_name=settings.queue_name,
        retention_s=settings.status_retention_s,
        window_margin_s=settings.window_margin_s,
        concurrency=settings.worker_concurrency,
        http_client=settings.http_client,
        lane_sweep_s=settings.lane_sweep_s,
        health_probe_s=settings.health_probe_s,
        waba_id=settings.waba_id,
        template_sync_s=settings.template_sync_s,
        events_maxlen=settings.events_maxlen,
        window_closing_lead_s=settings.window_closing_lead_s,
        dlq_retention_s=settings.dlq_retention_s,
        webhooks=WebhookConfig(
            timeout_s=settings.webhook_timeout_s,
            retry_schedule_s=tuple(settings.webhook_retry_schedule),
        ),
        delivery=DeliveryConfig(
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_cap_s=settings.backoff_cap_s,
            pause_check_s=settings.pause_check_s,
            reconcile_wait_s=settings.reconcile_wait_s,
            ambiguous_policy=settings.ambiguous_policy,
            max_batch=settings.lane_batch,
            slice_s=settings.lane_slice_s,
        ),
        limits=RateConfig(
            default_mps=settings.default_mps,
            pair_interval_s=settings.pair_interval_s,
            pair_burst=settings.pair_burst,
            safety=settings.rate_safety,
            bulk_share=settings.bulk_share,
            recover_s=settings.throttle_recover_s,
        ),
    )
    return dataclasses.replace(config, **overrides)


@app.command()
def worker(
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus /metrics on this port (WAQ_WORKER_METRICS_PORT)."),
    ] = None,
) -> None:
    """Run a worker: drain the sender lanes in Redis through the Graph API, a batch at a time."""
    settings = Settings()
    _configure(settings)
    port = metrics_port or settings.worker_metrics_port
    freeze_startup_heap()
    run_worker(_worker_config(settings, str(settings.redis_url), metrics_port=port))


@app.command()
def demo() -> None:
    """Run the whole pipeline on embedded defaults (Valkey + sandbox + worker) and check a scene."""
    settings = Settings()
    _configure(settings, level="ERROR")
    with redis_for(settings) as redis:
        code = asyncio.run(run_demo(redis.url, say=typer.echo))
    raise typer.Exit(code)


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve the HTTP gateway: send API, Meta's webhooks, status, health check."""
    settings = Settings()
    _configure(settings)
    app = create_app(gateway_config(settings))
    freeze_startup_heap()
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
    )


@app.command()
def health(
    phone_number_id: Annotated[
        str | None, typer.Option(help="Number to check (default: WAQ_DEFAULT_PHONE_NUMBER_ID).")
    ] = None,
    to: Annotated[str | None, typer.Option(help="Send a test message to this customer.")] = None,
    text: Annotated[str, typer.Option(help="The test message's text.")] = "waq health check",
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Check a configuration end to end; exit 0 healthy, 1 degraded, 2 unhealthy."""
    settings = Settings()
    _configure(settings, level="WARNING")
    sender = phone_number_id or settings.default_phone_number_id
    if sender is None:
        typer.echo("error: give --phone-number-id or set WAQ_DEFAULT_PHONE_NUMBER_ID", err=True)
        raise typer.Exit(2)

    async def run() -> HealthReport:
        state = GatewayState.connect(gateway_config(settings))
        try:
            return await run_health_check(
                state.redis,
                state.producer,
                phone_number_id=sender,
                queue_name=settings.queue_name,
                to=normalize_recipient(to) if to else None,
                text=text,
            )
        finally:
            await state.aclose()

    report = asyncio.run(run())
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(f"{report.status.value.upper()}  phone number {report.phone_number_id}")
        for name, check in report.checks.items():
            mark = "ok  " if check.passed else ("FAIL" if check.critical else "warn")
            typer.echo(f"  {mark} {name:<20} {check.error or ''}")
        if report.test_message is not None:
            test = report.test_message
            typer.echo(f"  test message {test.message_id}: {test.state} - {test.reason}")
    raise typer.Exit({"healthy": 0, "degraded": 1}.get(report.status.value, 2))


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    sandbox_port: Annotated[int, typer.Option(help="Sandbox port.")] = 8090,
) -> None:
    """Start Valkey, the sandbox, the gateway and a worker, wired like production; Ctrl-C stops."""
    sandbox_config = SandboxConfig()
    gateway_url = f"http://127.0.0.1:{port}"
    sandbox_config.webhook_url = f"{gateway_url}/webhooks/whatsapp"
    settings = Settings().model_copy(
        update={
            "access_token": SecretStr(sandbox_config.access_token),
            "app_secret": SecretStr(sandbox_config.app_secret),
            "verify_token": SecretStr("dev-verify-token"),
            "api_keys": [SecretStr("dev-key")],
            "admin_keys": [SecretStr("dev-admin-key")],
            "default_phone_number_id": DEFAULT_PHONE_NUMBER_ID,
            "waba_id": WABA_ID,  # the sandbox's account: its templates are synced and checked
        }
    )
    _configure(settings)
    with (
        redis_for(settings) as redis,
        SandboxServer(sandbox_config, port=sandbox_port) as fake_meta,
    ):
        redis_url = redis.url
        settings = settings.model_copy(update={"graph_base_url": fake_meta.url})
        config = dataclasses.replace(gateway_config(settings), redis_url=redis_url)
        with BackgroundServer(create_app(config), port=port):
            typer.echo(f"gateway {gateway_url} (X-API-Key: dev-key), sandbox {fake_meta.url}")
            typer.echo(f"console {gateway_url}/console (admin key: dev-admin-key)")
            typer.echo(f"export WAQ_REDIS_URL={redis_url}")
            typer.echo(
                f"try: curl -s -X POST {gateway_url}/v1/sandbox/inbound -H 'X-API-Key: dev-key' "
                "-H 'Content-Type: application/json' -d '{\"from\": \"+16505551234\"}'"
            )
            freeze_startup_heap()
            run_worker(_worker_config(settings, redis_url), redis_alive=redis.alive)


def gateway_config(settings: Settings) -> GatewayConfig:
    """The gateway's config from the settings."""
    return GatewayConfig(
        redis_url=str(settings.redis_url),
        api_keys=tuple(k.get_secret_value() for k in settings.api_keys),
        admin_keys=tuple(k.get_secret_value() for k in settings.admin_keys),
        app_secret=settings.app_secret.get_secret_value() if settings.app_secret else None,
        verify_token=settings.verify_token.get_secret_value() if settings.verify_token else None,
        default_phone_number_id=settings.default_phone_number_id,
        queue_name=settings.queue_name,
        retention_s=settings.status_retention_s,
        window_margin_s=settings.window_margin_s,
        graph_base_url=settings.graph_base_url,
        default_mps=settings.default_mps,
        max_body_bytes=settings.max_body_bytes,
        conversation_key=(
            settings.conversation_key.get_secret_value() if settings.conversation_key else None
        ),
        opt_out_keywords=tuple(settings.opt_out_keywords),
        opt_in_keywords=tuple(settings.opt_in_keywords),
        conversation_retention_s=settings.conversation_retention_s,
    )


app.add_typer(dlq, name="dlq")
app.add_typer(limits, name="limits")
app.add_typer(templates, name="templates")
app.add_typer(webhooks, name="webhooks")
app.add_typer(broadcast, name="broadcast")
app.add_typer(optouts, name="optouts")
app.add_typer(events, name="events")
app.command()(cancel)
app.command()(pause)
app.command()(resume)
app.command()(status)


@app.command()
def loadtest(
    messages: Annotated[int, typer.Option("--messages", "-n", help="How many to send.")] = 1000,
    rate: Annotated[float, typer.Option(help="Enqueue rate, msg/s (0: as fast as possible).")] = 0,
    recipients: Annotated[int, typer.Option(help="Spread over this many recipients.")] = 50,
    senders: Annotated[int, typer.Option(help="Spread over this many sender numbers.")] = 1,
    via: Annotated[
        Via, typer.Option(help="Enqueue through the Python producer or the gateway.")
    ] = (Via.PRODUCER),
    embedded: Annotated[
        bool,
        typer.Option(help="Start Valkey, the sandbox, a gateway and workers here (no setup)."),
    ] = False,
    workers: Annotated[int, typer.Option(help="Worker processes, with --embedded.")] = 2,
    mps: Annotated[
        float | None, typer.Option(help="Each sender's rate limit, with --embedded (Meta: 80).")
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Send this approved template instead of text.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Stop watching after this many seconds.")] = 120,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    report_file: Annotated[
        str | None,
        typer.Option("--report", help="Also write the report as a self-contained HTML page."),
    ] = None,
    allow_production: Annotated[
        bool,
        typer.Option(help="Allow a Graph API that is not a sandbox (needs --allow-recipients)."),
    ] = False,
    allow_recipients: Annotated[
        str | None,
        typer.Option(help="With --allow-production: the only numbers to send to, comma-separated."),
    ] = None,
) -> None:
    """Send bulk test traffic through the pipeline, watch every message to its end, report.

    Refuses any Graph API but the sandbox unless --allow-production and --allow-recipients.
    """
    settings = Settings()
    _configure(settings, level="ERROR")
    run = LoadRun(
        messages=messages, rate=rate, recipients=recipients, senders=senders, via=via.value,
        workers=workers, mps=mps, template=template, timeout_s=timeout,
        allow_production=allow_production,
        allow_recipients=[normalize_recipient(n) for n in (allow_recipients or "").split(",")
                          if n.strip()],
        say=lambda line: typer.echo(line, err=True),
    )  # fmt: skip
    try:
        report = run.embedded(settings) if embedded else run.configured(settings)
    except LoadTestRefused as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(report.model_dump_json(indent=2) if as_json else report.render())
    if report_file:
        Path(report_file).write_text(render_html(report), encoding="utf-8")
        typer.echo(f"report written to {report_file}", err=True)
    raise typer.Exit(0 if report.unfinished == 0 else 1)
