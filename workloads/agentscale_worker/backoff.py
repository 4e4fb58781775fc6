"""Retry waits: exponential backoff with full jitter (pure; ``rng`` injectable for tests)."""

from __future__ import annotations

import random


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base * 2**(attempt-1))].

    ``attempt`` counts from 1 (the wait after the first failure)."""
    cap = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0, cap)
