"""The pipeline's recent history, for charts: counters per 10-second bucket (``keys.stats``).

The transition scripts add up each batch and increment a bucket's fields once per batch, so
keeping the history costs a few commands a batch, not one a message; reading the last hour is
one pipelined round trip over 360 small hashes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from redis.asyncio import Redis

from producer import keys

__all__ = ["Bucket", "Series", "percentile", "read_series", "record_depth"]


@dataclass(slots=True)
class Bucket:
    """One bucket's counters."""

    at: float
    """The bucket's start (unix s)."""
    queued: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    """Accepted by Meta, by sender number."""
    retried: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    """Dead-lettered, by error code."""
    delivered: int = 0
    read: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(keys.LATENCY_EDGES_S) + 1))
    """Enqueue-to-accepted counts per ``keys.LATENCY_EDGES_S`` bucket."""
    depth: int | None = None
    """Messages not yet final, as a worker's sweep last saw them in this bucket."""


@dataclass(slots=True)
class Series:
    """The buckets of a span, oldest first, and the rates the charts compare against."""

    buckets: list[Bucket]
    width_s: int
    limits: dict[str, float]
    """Each sender's configured messages per second (the default for those not set)."""

    def numbers(self) -> list[str]:
        """Every sender that sent in the span."""
        return sorted({n for b in self.buckets for n in b.sent})

    def codes(self) -> list[str]:
        """Every error code that dead-lettered in the span."""
        return sorted({c for b in self.buckets for c in b.dead})


async def read_series(
    redis: Redis, *, span_s: int = 3600, default_mps: float = 80.0, now: float | None = None
) -> Series:
    """The last ``span_s`` of buckets (one round trip) and the senders' limits."""
    width = keys.STATS_BUCKET_S
    last = int((now or time.time()) // width)
    first = last - span_s // width + 1
    async with redis.pipeline(transaction=False) as pipe:
        for bucket in range(first, last + 1):
            pipe.hgetall(keys.stats(bucket))
        pipe.hgetall(keys.RATE_LIMITS)
        *raw, rates = await pipe.execute()
    buckets = [
        _bucket(float(b * width), fields)
        for b, fields in zip(range(first, last + 1), raw, strict=True)
    ]
    series = Series(buckets=buckets, width_s=width, limits={})
    configured = {_text(k): float(v) for k, v in rates.items()}
    series.limits = {n: configured.get(n, default_mps) for n in series.numbers()}
    return series


async def record_depth(redis: Redis, depth: int, *, now: float | None = None) -> None:
    """Write the queue depth into the current bucket (the workers' sweep, every few seconds)."""
    key = keys.stats(int((now or time.time()) // keys.STATS_BUCKET_S))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, "depth", str(depth))
        pipe.expire(key, keys.STATS_KEEP_S)
        await pipe.execute()


def percentile(counts: list[int], fraction: float) -> float | None:
    """The upper edge (s) of the latency bucket holding the ``fraction`` quantile, or None.

    The slowest bucket has no edge; it reports twice the last one.
    """
    total = sum(counts)
    if not total:
        return None
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= fraction * total:
            edges = keys.LATENCY_EDGES_S
            return edges[i] if i < len(edges) else edges[-1] * 2
    return None


def _bucket(at: float, fields: dict[bytes, bytes]) -> Bucket:
    bucket = Bucket(at=at)
    for raw_name, raw_value in fields.items():
        name, value = _text(raw_name), int(raw_value)
        kind, _, label = name.partition(":")
        if kind == "sent":
            bucket.sent[label] = value
        elif kind == "retry":
            bucket.retried[label] = value
        elif kind == "dead":
            bucket.dead[label] = value
        elif kind == "lat" and label.isdigit() and int(label) < len(bucket.latency):
            bucket.latency[int(label)] = value
        elif name == "depth":
            bucket.depth = value
        elif name in ("queued", "delivered", "read"):
            setattr(bucket, name, value)
    return bucket


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
