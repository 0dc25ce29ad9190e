"""How much Redis memory each kind of record holds, estimated from a random sample of keys.

Counting keys by kind exactly takes a keyspace SCAN, which at 300,000 messages is seconds of
work and holds every worker back; a sample of a few hundred ``RANDOMKEY``s (O(1) each) with
their ``MEMORY USAGE`` tells the shares to a few percent, in two round trips. The stream
and the big indexes are single keys a sample would miss, so they are measured directly.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel
from redis.asyncio import Redis

from producer import keys

__all__ = ["MemoryKind", "MemoryReport", "read_memory"]

# (kind, pattern) in the order they are tried; names say what an operator would call them.
_KINDS: Final = (
    ("message histories", re.compile(r"^waq:msg:.*:history$")),
    ("message records", re.compile(r"^waq:msg:")),
    ("dead-letter indexes", re.compile(r"^waq:dlq:by:")),
    ("dead letters", re.compile(r"^waq:dlq:")),
    ("conversations", re.compile(r"^waq:conv:")),
    ("conversation order lists", re.compile(r"^waq:\{[^}]*\}:order:")),
    ("service windows", re.compile(r"^waq:\{[^}]*\}:window:")),
    ("customer rate limits", re.compile(r"^waq:\{[^}]*\}:rate:pair:")),
    ("wamid index", re.compile(r"^waq:wamid:")),
    ("webhook dedupe marks", re.compile(r"^waq:webhook:")),
    ("webhook outboxes", re.compile(r"^waq:wh:")),
    ("arq jobs", re.compile(r"^arq:")),
    ("broadcasts", re.compile(r"^waq:bc:")),
    ("stats buckets", re.compile(r"^waq:stats:")),
    ("recipients' newest messages", re.compile(r"^waq:to:")),
)
_SINGLE: Final = (
    ("events stream", keys.EVENTS),
    ("dead-letter index", keys.DEAD_LETTERS),
)


class MemoryKind(BaseModel):
    """One kind of record: about how many keys, and about how many bytes they hold."""

    kind: str
    keys: int
    bytes: int


class MemoryReport(BaseModel):
    """Redis' memory in all, and by kind of record (estimates, from ``sampled`` keys)."""

    used_bytes: int
    total_keys: int
    sampled: int
    kinds: list[MemoryKind]


async def read_memory(redis: Redis, *, samples: int = 400) -> MemoryReport:
    """Estimate each kind's keys and bytes: DBSIZE x its share of a random sample."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.info("memory")
        pipe.dbsize()
        for _ in range(samples):
            pipe.randomkey()
        for _, key in _SINGLE:
            pipe.memory_usage(key)
        info, total, *rest = await pipe.execute()
    sampled = [k for k in rest[:samples] if k is not None]
    singles = rest[samples:]
    async with redis.pipeline(transaction=False) as pipe:
        for key in sampled:
            pipe.memory_usage(key)
        usages = await pipe.execute()
    found: dict[str, list[int]] = {}
    single_keys = {key for _, key in _SINGLE}
    for key, usage in zip(sampled, usages, strict=True):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in single_keys or usage is None:
            continue
        kind = next((kind for kind, pattern in _KINDS if pattern.match(name)), "other")
        found.setdefault(kind, []).append(int(usage))
    total_keys = int(total)
    kinds = [
        MemoryKind(kind=kind, keys=1, bytes=int(usage))
        for (kind, _), usage in zip(_SINGLE, singles, strict=True)
        if usage is not None
    ]
    for kind, sizes in found.items():
        count = round(total_keys * len(sizes) / max(len(sampled), 1))
        kinds.append(
            MemoryKind(kind=kind, keys=count, bytes=round(count * sum(sizes) / len(sizes)))
        )
    kinds.sort(key=lambda k: -k.bytes)
    return MemoryReport(
        used_bytes=int(info.get("used_memory", 0)),
        total_keys=total_keys,
        sampled=len(sampled),
        kinds=kinds,
    )
