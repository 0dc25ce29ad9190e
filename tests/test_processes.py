"""What a real ``waq gateway`` and ``waq worker`` process does when it starts, read from its
own log: the start-up heap is frozen out of full collections (waq/heap.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sandbox import SandboxServer, free_port
from tests.test_under_load import spawn_workers, stop


def frozen_objects(log: Path) -> int | None:
    """The count the process logged when it froze its heap, if it has yet."""
    for line in log.read_text(errors="replace").splitlines():
        if (
            line.startswith("{")
            and (entry := json.loads(line)).get("event") == "process.heap_frozen"
        ):
            return int(entry["objects"])
    return None


def wait_for(log: Path, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while (count := frozen_objects(log)) is None:
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
        time.sleep(0.1)
    return count


def test_a_gateway_process_freezes_its_start_up_heap(redis_url: str, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "gateway.log"
    env = {**os.environ, "WAQ_REDIS_URL": redis_url, "WAQ_LOG_FORMAT": "json",
           "WAQ_API_KEYS": "k"}  # fmt: skip
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "waq", "gateway", "--port", str(port)],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        assert wait_for(log) > 10_000  # FastAPI, pydantic's schemas, the contract
        deadline = time.monotonic() + 30
        while True:  # and it serves, with the heap frozen
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json() == {
                    "ok": True
                }
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


def test_a_worker_process_freezes_its_start_up_heap(
    redis_url: str, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    workers = spawn_workers(1, redis_url, sandbox_server.url, tmp_path)
    try:
        assert wait_for(tmp_path / "worker-0.log") > 10_000
    finally:
        assert stop(workers) == [0]
