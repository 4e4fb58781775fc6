"""Heartbeat: keep the messages this consumer is still working on from looking dead to other consumers.

``XAUTOCLAIM`` takes any message idle longer than ``claim_idle_ms``; a slow handler, or one waiting for its
model to come back, would otherwise be duplicated by a healthy peer. ``XCLAIM ... JUSTID`` to ourselves every
``claim_idle_ms / 3`` resets the idle time without counting a delivery."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import streams
from .inflight import InFlight


async def heartbeat_loop(
    redis: aioredis.Redis, consumer: str, claim_idle_ms: int, inflight: InFlight, stopping: asyncio.Event
) -> None:
    interval = max(0.05, claim_idle_ms / 3000)
    while not stopping.is_set():
        await asyncio.sleep(interval)
        for stream, in_flight in inflight.ids.items():
            ids: list[Any] = list(in_flight)
            if not ids:
                continue
            with contextlib.suppress(*streams.REDIS_ERRORS, ResponseError):
                await redis.xclaim(stream, streams.GROUP, consumer, 0, ids, justid=True)
