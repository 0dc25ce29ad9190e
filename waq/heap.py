"""A long-running process's start-up heap, kept out of the garbage collector's full passes.

A gateway or worker imports FastAPI, pydantic's schemas, arq and the contract: about 120,000
tracked objects that live as long as the process. CPython's full collection walks all of
them each time; in a gateway taking batches that was ten 73 ms pauses a minute, 12 µs of
every message's 46 (``gc.callbacks`` timing the passes; docs/performance.md). ``gc.freeze``
moves them to a generation no collection visits, which is what it is for
(https://docs.python.org/3/library/gc.html#gc.freeze). Collections of what the process
allocates afterwards, cycles included, run as before.

A process entry point calls this (``waq gateway``, ``waq worker``), not a library
function: freezing a test runner's heap would keep its garbage for good.
"""

from __future__ import annotations

import gc

import structlog

__all__ = ["freeze_startup_heap"]

log = structlog.get_logger("waq.process")


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then freeze the rest out of later collections."""
    gc.collect()
    gc.freeze()
    log.info("process.heap_frozen", objects=gc.get_freeze_count())
