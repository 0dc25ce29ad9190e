"""Templates checked before they fail: a real worker syncs the account's templates from the
sandbox (as from Meta), and the gateway refuses a template message that would be a 132xxx
dead letter, naming the field; a catalog never synced checks nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from producer import CatalogTemplate, TemplateCatalog
from sandbox import BackgroundServer, SandboxServer
from tests.conftest import API_KEY
from tests.support import ACCESS_TOKEN
from tests.test_gateway import CUSTOMER
from waq.cli import app

WABA = "102290129340398"


def template(name: str, language: str = "en_US", *params: str) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "language": {"code": language}}
    if params:
        body["components"] = [
            {"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}
        ]
    return {"to": CUSTOMER, "message": {"type": "template", "template": body}}


@pytest.fixture
def synced_worker(redis_url: str, sandbox_server: SandboxServer) -> Iterator[None]:
    """A real `waq worker` with WAQ_WABA_ID: it syncs the templates when it starts."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "waq", "worker"],
        env={**os.environ, "WAQ_REDIS_URL": redis_url, "WAQ_GRAPH_BASE_URL": sandbox_server.url,
             "WAQ_ACCESS_TOKEN": ACCESS_TOKEN, "WAQ_WABA_ID": WABA, "WAQ_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        worker.terminate()
        worker.wait(timeout=30)


@pytest.fixture
async def api(gateway_server: BackgroundServer, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway_server.url, headers={"X-API-Key": API_KEY}
    ) as client:
        yield client


async def test_a_worker_syncs_the_catalog_and_the_gateway_checks_against_it(
    redis: Redis, api: httpx.AsyncClient, synced_worker: None
) -> None:
    """Unknown template, missing translation, wrong parameter count: 422 naming the field,
    nothing queued; the right one is queued; a batch refuses the bad items alone."""
    catalog = TemplateCatalog(redis)
    deadline = time.monotonic() + 30
    while (synced := await catalog.all())[0] is None:
        assert time.monotonic() < deadline, "the worker did not sync the templates"
        await asyncio.sleep(0.1)
    found = {(t.name, t.language): t for t in synced[1]}
    assert found[("order_confirmation", "en_US")].body_parameters == 2
    assert found[("hello_world", "en_US")].status == "APPROVED"
    assert ("waq_followup", "en") in found
    cases = [
        (template("no_such_template"), "message.template.name", "template_unknown"),
        (template("hello_world", "fr"), "message.template.language.code", "template_language"),
        (template("order_confirmation", "en_US", "only one"), "message.template.components",
         "template_parameters"),
    ]  # fmt: skip
    for body, field, rule in cases:
        response = await api.post("/v1/messages", json=body)
        assert response.status_code == 422, response.text
        assert (response.json()["field"], response.json()["errors"][0]["rule"]) == (field, rule)
    assert (await api.post("/v1/messages", json=template("order_confirmation", "en_US", "A", "B"))
            ).status_code == 202  # fmt: skip
    batch = await api.post(
        "/v1/messages/batch",
        json={"messages": [template("no_such_template"), template("hello_world")]},
    )
    answer = batch.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert answer["results"][0]["error"]["field"] == "message.template.name"


async def test_a_paused_template_is_refused_and_a_never_synced_catalog_checks_nothing(
    redis: Redis, api: httpx.AsyncClient
) -> None:
    unknown = await api.post("/v1/messages", json=template("no_such_template"))
    assert unknown.status_code == 202, "never synced: Meta decides"
    await TemplateCatalog(redis).replace(
        [CatalogTemplate("spring_sale", "en_US", "PAUSED", "MARKETING", 0)]
    )
    paused = await api.post("/v1/messages", json=template("spring_sale"))
    assert paused.status_code == 422
    assert "PAUSED" in paused.json()["detail"]
    assert "132015" in paused.json()["detail"]


def test_templates_sync_and_list_through_the_cli(redis_url: str, synced_worker: None) -> None:
    """`waq templates sync` asks a worker and waits; `waq templates list` shows the result."""
    env = {"WAQ_REDIS_URL": redis_url}
    runner = CliRunner()
    synced = runner.invoke(app, ["templates", "sync", "--timeout", "30"], env=env)
    assert synced.exit_code == 0, synced.output
    assert "synced 4 templates" in synced.output
    listed = runner.invoke(app, ["templates", "list"], env=env)
    assert "order_confirmation" in listed.output
    assert "APPROVED" in listed.output
