"""Retry delays, as pure functions so they can be tested and reasoned about alone."""

from __future__ import annotations

import random

__all__ = ["backoff_s", "pair_backoff_s"]


def backoff_s(
    attempt: int, *, base_s: float = 1.0, cap_s: float = 300.0, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2^(attempt-1))]``.

    Full jitter (AWS's analysis) spreads a crowd of retrying workers evenly instead of
    letting them hit Meta again in lockstep. ``attempt`` counts from 1.
    """
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0, ceiling)


def pair_backoff_s(pair_failures: int, *, cap_s: float = 1024.0) -> float:
    """Meta's published schedule for 131056: 4^x seconds, x counting from 0 (1, 4, 16, 64...)."""
    return float(min(cap_s, 4 ** max(0, pair_failures - 1)))
