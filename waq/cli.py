"""The ``waq`` command: one front for the worker, the sandbox, the demo and the operators."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from producer.status_store import StatusStore
from sandbox import SandboxConfig, SandboxServer, WindowErrors
from waq.demo import run_demo
from waq.embedded import redis_for
from waq.settings import Settings
from worker.dead_letters import DeadLetter, DeadLetterStore
from worker.delivery import DeliveryConfig
from worker.logs import configure_logging, shorten_phone
from worker.pauses import PauseStore
from worker.runner import WorkerConfig, create_worker

T = TypeVar("T")

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
) -> None:
    """Serve a fake Meta Graph API (and its webhooks) for tests, demos and load tests.

    It accepts WAQ_ACCESS_TOKEN as the bearer token and signs webhooks with WAQ_APP_SECRET
    (the sandbox's well-known defaults when unset).
    """
    settings = Settings()
    config = SandboxConfig(webhook_url=webhook_url, seed=seed, window_errors=window_errors)
    if settings.access_token is not None:
        config.access_token = settings.access_token.get_secret_value()
    if settings.app_secret is not None:
        config.app_secret = settings.app_secret.get_secret_value()
    server = SandboxServer(config, host=host, port=port)
    version = settings.graph_api_version
    typer.echo(f"sandbox: Graph API at {server.url}/{version}, control at {server.url}/_sandbox")
    server.run()


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
        health_probe_s=settings.health_probe_s,
        delivery=DeliveryConfig(
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_cap_s=settings.backoff_cap_s,
            pause_check_s=settings.pause_check_s,
        ),
    )
    return dataclasses.replace(config, **overrides)


@app.command()
def worker() -> None:
    """Run a worker: take send jobs from Redis and deliver them through the Graph API."""
    settings = Settings()
    _configure(settings)
    create_worker(_worker_config(settings, str(settings.redis_url))).run()


@app.command()
def demo() -> None:
    """Run the whole pipeline on embedded defaults (Valkey + sandbox + worker) and check a scene."""
    settings = Settings()
    _configure(settings, level="ERROR")
    with redis_for(settings) as redis_url:
        code = asyncio.run(run_demo(redis_url, say=typer.echo))
    raise typer.Exit(code)


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Sandbox port.")] = 8090,
) -> None:
    """Start Valkey, the sandbox and a worker, and keep them running for local work."""
    settings = Settings()
    _configure(settings)
    with redis_for(settings) as redis_url, SandboxServer(SandboxConfig(), port=port) as server:
        typer.echo(f"export WAQ_REDIS_URL={redis_url} WAQ_GRAPH_BASE_URL={server.url}")
        typer.echo("sandbox token: sandbox-token; Ctrl-C to stop")
        config = _worker_config(
            settings.model_copy(update={"access_token": SecretStr(SandboxConfig().access_token)}),
            redis_url,
            graph_base_url=server.url,
        )
        create_worker(config).run()


dlq = typer.Typer(help="Read the dead-letter queue.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operator command; an unreachable Redis is a sentence, not a stack trace."""
    try:
        return asyncio.run(coro)
    except RedisConnectionError as exc:
        typer.echo(f"error: cannot reach Redis (WAQ_REDIS_URL): {exc}", err=True)
        raise typer.Exit(3) from None


def _redis(settings: Settings) -> Redis:
    redis: Redis = Redis.from_url(str(settings.redis_url))
    return redis


@dlq.command("list")
def dlq_list(
    code: Annotated[str | None, typer.Option(help="Only this error code, e.g. 131047.")] = None,
    suggestion: Annotated[
        str | None, typer.Option(help="Only this suggestion, e.g. send_template.")
    ] = None,
    phone_number_id: Annotated[str | None, typer.Option(help="Only this sender.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List dead letters, newest first."""

    async def run() -> list[DeadLetter]:
        redis = _redis(Settings())
        try:
            store = DeadLetterStore(
                redis, StatusStore(redis, retention_s=Settings().status_retention_s)
            )
            return await store.list(
                limit=limit, code=code, suggestion=suggestion, phone_number_id=phone_number_id
            )
        finally:
            await redis.aclose()

    letters = _run(run())
    if as_json:
        for letter in letters:
            typer.echo(letter.model_dump_json())
        return
    typer.echo(f"{'id':<35} {'to':<11} {'type':<11} {'code':<8} {'suggestion':<15} hint")
    for letter in letters:
        typer.echo(
            f"{letter.id:<35} {shorten_phone(letter.to):<11} {letter.type:<11} {letter.code!s:<8} "
            f"{letter.suggestion.value:<15} {letter.hint}"
        )


@dlq.command("show")
def dlq_show(
    message_id: Annotated[str, typer.Argument(help="The dead letter's message id.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
) -> None:
    """Show one dead letter: request, attempts, final error, hint."""

    async def run() -> DeadLetter | None:
        redis = _redis(Settings())
        try:
            return await DeadLetterStore(redis, StatusStore(redis, retention_s=60)).get(message_id)
        finally:
            await redis.aclose()

    letter = _run(run())
    if letter is None:
        typer.echo(f"error: no dead letter {message_id}", err=True)
        raise typer.Exit(1)
    typer.echo(letter.model_dump_json(indent=2) if as_json else _describe(letter))


def _describe(letter: DeadLetter) -> str:
    lines = [
        f"message    {letter.id}",
        f"from/to    {letter.phone_number_id} -> {letter.to} ({letter.type})",
        f"error      {letter.code}: {letter.error.get('title')}",
        f"details    {letter.error.get('details') or '-'}",
        f"suggestion {letter.suggestion.value}: {letter.hint}",
        "attempts:",
    ]
    lines += [
        f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.at))}Z {e.state.value:<9} "
        f"{e.detail or ''}"
        for e in letter.attempts
    ]
    lines.append("request:\n" + json.dumps(letter.request, indent=2))
    return "\n".join(lines)


@app.command()
def pause(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
    reason: Annotated[
        str, typer.Option(help="Why, for the other operators.")
    ] = "paused by an operator",
) -> None:
    """Stop sending from a number; its messages wait (nothing is dead-lettered)."""

    async def run() -> bool:
        redis = _redis(Settings())
        try:
            return await PauseStore(redis).pause(
                phone_number_id, reason=reason, code=None, by="operator"
            )
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {'paused' if _run(run()) else 'was already paused'}")


@app.command()
def resume(
    phone_number_id: Annotated[str, typer.Argument(help="The business number's Graph id.")],
) -> None:
    """Resume sending from a paused number."""

    async def run() -> bool:
        redis = _redis(Settings())
        try:
            return await PauseStore(redis).resume(phone_number_id)
        finally:
            await redis.aclose()

    typer.echo(f"{phone_number_id}: {'resumed' if _run(run()) else 'was not paused'}")
