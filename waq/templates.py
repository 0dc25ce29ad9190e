"""``waq templates``: the WhatsApp Business Account's templates, synced and listed."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated, Any

import typer
from arq.connections import ArqRedis

from producer.client import json_serializer
from producer.template_catalog import CatalogTemplate, TemplateCatalog
from waq._command import open_redis, run
from waq.settings import Settings
from worker.runner import SYNC_TEMPLATES_FUNCTION

__all__ = ["templates"]

templates = typer.Typer(
    help="The account's templates: synced from Meta, checked before a template message is queued.",
    no_args_is_help=True,
)


@templates.command("sync")
def sync(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a worker.")] = 30,
) -> None:
    """Ask a worker to read the templates from Meta now (only workers hold the token)."""
    settings = Settings()

    async def go() -> dict[str, Any]:
        redis = ArqRedis(
            open_redis(settings).connection_pool,
            job_serializer=json_serializer,
            job_deserializer=json.loads,
            default_queue_name=settings.queue_name,
        )
        try:
            job = await redis.enqueue_job(SYNC_TEMPLATES_FUNCTION, _queue_name=settings.queue_name)
            if job is None:
                return {"ok": False, "error": {"title": "a sync is already queued"}}
            try:
                result: dict[str, Any] = await job.result(timeout=timeout, poll_delay=0.1)
            except TimeoutError:
                return {"ok": False, "error": {"title": f"no worker answered in {timeout:g} s"}}
            return result
        finally:
            await redis.aclose(close_connection_pool=True)

    result = run(go())
    if not result.get("ok"):
        error = result.get("error") or {}
        typer.echo(f"error: sync failed: {error.get('code', '')} {error.get('title')}", err=True)
        raise typer.Exit(1)
    typer.echo(f"synced {result['templates']} templates")


@templates.command("list")
def list_templates(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """The templates as last synced: name, language, status, category, body parameters."""
    settings = Settings()

    async def read() -> tuple[float | None, list[CatalogTemplate]]:
        redis = open_redis(settings)
        try:
            return await TemplateCatalog(redis).all()
        finally:
            await redis.aclose()

    synced_at, found = run(read())
    if as_json:
        typer.echo(json.dumps({"synced_at": synced_at, "templates": [asdict(t) for t in found]}))
        return
    if synced_at is None:
        typer.echo("never synced: set WAQ_WABA_ID for the workers, or run `waq templates sync`")
        return
    typer.echo(f"synced {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(synced_at))}")
    typer.echo(f"{'name':<32} {'language':<9} {'status':<9} {'category':<14} {'body params':>11}")
    for t in found:
        typer.echo(
            f"{t.name:<32} {t.language:<9} {t.status:<9} {t.category:<14} {t.body_parameters:>11}"
        )
