"""Closed-loop asyncio load generators (for measurements where Locust's own CPU would distort)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .stack import percentile


async def closed_loop(
    op: Callable[[int], Awaitable[Any]], concurrency: int, duration_s: float
) -> dict[str, float]:
    lat: list[float] = []
    end = time.monotonic() + duration_s
    errors = 0

    async def loop(k: int) -> None:
        nonlocal errors
        i = k
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                await op(i)
            except Exception:
                errors += 1
                continue
            lat.append((time.perf_counter() - t) * 1000)
            i += concurrency

    t0 = time.monotonic()
    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    wall = time.monotonic() - t0
    return {
        "concurrency": concurrency,
        "rps": len(lat) / wall,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "requests": len(lat),
        "errors": errors,
    }


def sync_run_op(session: Any, url: str, bodies: list[dict[str, Any]]) -> Callable[[int], Awaitable[None]]:
    """``op(i)``: one synchronous run through the gateway with ``bodies[i % len(bodies)]``; non-200 raises."""

    async def op(i: int) -> None:
        async with session.post(url + "/v1/runs/sync", json=bodies[i % len(bodies)]) as r:
            if r.status != 200:
                raise RuntimeError(r.status)
            await r.read()

    return op
