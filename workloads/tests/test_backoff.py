"""Unit tests of the retry waits."""

from __future__ import annotations

import random

from agentscale_worker.backoff import backoff_s


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        cap = min(2.0, 0.1 * 2 ** (attempt - 1))
        samples = [backoff_s(attempt, 0.1, 2.0, rng) for _ in range(200)]
        assert all(0 <= x <= cap for x in samples)
        assert max(samples) > cap * 0.8  # full jitter spreads over the range
    assert len({backoff_s(3, 0.1, 2.0, rng) for _ in range(10)}) == 10
