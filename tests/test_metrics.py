"""Prometheus metrics after a known scene: a worker's counters, and the gateway's Redis gauges."""

from __future__ import annotations

import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from sandbox import BackgroundServer, SandboxClient
from tests.support import CUSTOMER, PNID, STRANGER, Pipeline
from worker.metrics import WorkerMetrics
from worker.pauses import PauseStore


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition text, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def at(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_worker_metrics_count_a_known_scene(
    pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """3 accepted (one after a 5xx), one 131047 dead letter: counters, latency and waits agree,
    and the worker serves them over HTTP."""
    metrics = WorkerMetrics()
    port = free_port()
    metrics.serve(port, host="127.0.0.1")
    await pipeline.customer_writes(sandbox)
    await sandbox.set_faults(server_error_next=1)
    await pipeline.send(to=CUSTOMER)
    await pipeline.send(to=CUSTOMER)
    await pipeline.send(to=CUSTOMER)
    dead = await pipeline.send(to=STRANGER)
    await pipeline.run_worker(metrics=metrics)
    assert (await pipeline.status(dead.message_id)).state.value == "dead"

    async with httpx.AsyncClient() as client:
        served = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    found = samples(served)
    [retried] = [
        dict(labels) for (name, labels), value in found.items()
        if name == "waq_send_outcomes_total" and dict(labels)["outcome"] == "retrying"
        and value == 1
    ]  # fmt: skip
    code = retried["code"]
    assert found[at("waq_send_outcomes_total", outcome="accepted", code="")] == 3
    assert found[at("waq_send_outcomes_total", outcome="dead", code="131047")] == 1
    assert found["waq_retries_total", frozenset({("code", code)})] == 1
    assert found["waq_graph_request_seconds_count", frozenset({("result", "ok")})] == 3
    assert found["waq_graph_request_seconds_count", frozenset({("result", "error")})] == 1
    # Every call to Meta took a slot first; the dead letter never reached Meta.
    assert found["waq_rate_limit_wait_seconds_count", frozenset()] == 4


async def test_gateway_metrics_read_redis(
    gateway_server: BackgroundServer, pipeline: Pipeline, redis: Redis
) -> None:
    """Queue depth, dead letters by code, paused numbers and pending per sender, from Redis."""
    await pipeline.send(to=CUSTOMER)
    await pipeline.send(to=CUSTOMER)
    await pipeline.send(to=STRANGER)
    await PauseStore(redis).pause(PNID, reason="maintenance", code=None, by="operator")
    async with httpx.AsyncClient(base_url=gateway_server.url) as client:
        answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)
    assert found["waq_queue_depth", frozenset()] == 3
    assert found["waq_queue_due", frozenset()] == 2
    assert found["waq_dead_letter_queue_size", frozenset()] == 0
    assert found["waq_paused_numbers", frozenset()] == 1
    assert found["waq_number_pending", frozenset({("phone_number_id", PNID)})] == 3

    await pipeline.pauses.resume(PNID)
    await pipeline.run_worker()  # nobody wrote in: all three die with 131047
    async with httpx.AsyncClient(base_url=gateway_server.url) as client:
        found = samples((await client.get("/metrics")).text)
    assert found["waq_dead_letters", frozenset({("code", "131047")})] == 3
    assert found["waq_dead_letter_queue_size", frozenset()] == 3
    assert found["waq_queue_depth", frozenset()] == 0
    assert found["waq_paused_numbers", frozenset()] == 0
