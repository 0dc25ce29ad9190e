"""Running the sandbox: in the foreground (``waq sandbox``) or on a background thread."""

from __future__ import annotations

import gc
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Self

import uvicorn
from starlette.applications import Starlette

from sandbox.app import DroppedByFault, Sandbox, create_app
from sandbox.config import SandboxConfig

__all__ = ["BackgroundServer", "SandboxProcess", "SandboxServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _HideInjectedDrops(logging.Filter):
    """A dropped connection is the sandbox doing its job; don't log it as a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedByFault))


class BackgroundServer:
    """An ASGI app served by uvicorn on its own thread and event loop, over real HTTP."""

    health_path = "/"

    def __init__(self, app: Starlette, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=self.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                # Keep idle keep-alive connections as long as httpx's pool may reuse them, so
                # a request never races the server closing its connection.
                timeout_keep_alive=30,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    def run(self) -> None:
        """Serve in the foreground until interrupted."""
        logging.getLogger("uvicorn.error").addFilter(_HideInjectedDrops())
        self._server.run()

    def run_process(self) -> None:
        """Serve as this process's only job (``waq sandbox``), with full collections off.

        The sandbox stamps each request's arrival to enforce Meta's per-second limit. A full
        garbage collection of its growing heap (the ledger) stalls it for tens of ms, and
        the requests that arrive meanwhile are stamped together: a burst nobody sent, and a
        spurious 130429. So only the young generations are collected automatically; the
        long-lived ledger holds no reference cycles worth reclaiming.
        """
        gc.freeze()
        gc.set_threshold(700, 10, 1_000_000_000)
        self.run()

    def start(self, timeout_s: float = 10.0) -> Self:
        """Serve on a daemon thread; return once the server answers."""
        self._thread = threading.Thread(target=self.run, name=f"server:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError(f"server did not start on {self.url}")

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SandboxServer(BackgroundServer):
    """The sandbox on a background thread (tests, ``waq demo``) or in the foreground."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        super().__init__(create_app(config), host=host, port=port)

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox's state, for in-process inspection (tests use the HTTP routes instead)."""
        sandbox: Sandbox = self.app.state.sandbox
        return sandbox


class SandboxProcess:
    """``waq sandbox`` in a process of its own, as Meta would be: for load tests and benchmarks.

    A sandbox on a thread of the process it measures would share its GIL and skew the
    figures; this one has its own interpreter.
    """

    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._command = [sys.executable, "-m", "waq", "sandbox", "--port", str(self.port)]
        self._command += args or []
        self._env = {**os.environ, "WAQ_LOG_LEVEL": "ERROR", **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self._process = subprocess.Popen(  # noqa: S603 - runs waq itself
            self._command, env=self._env, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("the sandbox process did not start in 20 s")

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
