"""Open-loop (Poisson arrivals) asyncio load generator: the offered load does not depend on how fast the
system answers, so two policies compared at the same rate see the same traffic."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .stack import percentile


async def open_loop(
    op: Callable[[int], Awaitable[Any]],
    rate_rps: float,
    duration_s: float,
    seed: int = 0,
    drain_s: float = 30,
) -> dict[str, float]:
    """Start ``op(i)`` at Poisson arrival times of ``rate_rps`` for ``duration_s`` (at most rate x duration
    x 2 arrivals); wait up to ``drain_s`` for the stragglers (those still running count as errors)."""
    rng = random.Random(seed)
    lat: list[float] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        t = time.perf_counter()
        try:
            await op(i)
        except Exception:
            errors += 1
            return
        lat.append((time.perf_counter() - t) * 1000)

    tasks: list[asyncio.Task[None]] = []
    t0 = time.perf_counter()
    next_t = 0.0
    limit = int(rate_rps * duration_s * 2) + 1
    for i in range(limit):
        next_t += rng.expovariate(rate_rps)
        if next_t >= duration_s:
            break
        delay = t0 + next_t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    sent_wall = time.perf_counter() - t0
    _done, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for t in pending:
        t.cancel()
    return {
        "offered_rps": rate_rps,
        "sent": len(tasks),
        "achieved_rps": len(lat) / max(1e-9, sent_wall),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "mean_ms": sum(lat) / len(lat) if lat else float("nan"),
        "errors": errors + len(pending),
    }
