"""Reclaiming: take over messages whose consumer died (pending and idle longer than ``claim_idle_ms``)."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import metrics, streams
from .inflight import InFlight

log = logging.getLogger(__name__)


async def reclaim_once(
    redis: aioredis.Redis, consumer: str, claim_idle_ms: int, inflight: InFlight, labels: metrics.StepLabels
) -> int:
    """XAUTOCLAIM idle entries into the free slots, highest lane first; earlier deliveries still count."""
    total = 0
    for stream in inflight.streams:
        free = inflight.free
        if free <= 0:
            break
        resp = await redis.xautoclaim(stream, streams.GROUP, consumer, claim_idle_ms, "0-0", count=free)
        claimed = [(i, f) for i, f in resp[1] if f]  # entries trimmed away come back empty
        for msg_id, fields in claimed:
            info = await redis.xpending_range(stream, streams.GROUP, msg_id, msg_id, 1)
            delivered = int(info[0]["times_delivered"]) if info else 1
            metrics.RECLAIMED.labels(*labels).inc()
            inflight.spawn(stream, msg_id, fields, max(0, delivered - 1))
        total += len(claimed)
    return total


async def reclaim_loop(
    redis: aioredis.Redis,
    consumer: str,
    claim_idle_ms: int,
    interval_s: float,
    inflight: InFlight,
    stopping: asyncio.Event,
    labels: metrics.StepLabels,
) -> None:
    while not stopping.is_set():
        try:
            await reclaim_once(redis, consumer, claim_idle_ms, inflight, labels)
        except (*streams.REDIS_ERRORS, ResponseError) as e:
            log.warning("reclaim failed: %s", e)
        await asyncio.sleep(interval_s)
