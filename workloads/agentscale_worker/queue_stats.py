"""Queue statistics: the consumer group's lag and pending count per step (and lag per lane) as metrics, every
``interval_s``; what dashboards and the resource controller read."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import metrics, streams
from .lanes import LANES


async def queue_stats_loop(
    redis: aioredis.Redis,
    lane_streams: list[str],
    labels: metrics.StepLabels,
    stopping: asyncio.Event,
    interval_s: float = 2.0,
) -> None:
    """``lane_streams``: the step's streams in ``LANES`` order."""
    while not stopping.is_set():
        with contextlib.suppress(*streams.REDIS_ERRORS, ResponseError):
            lag = pending = 0
            for lane, stream in zip(LANES, lane_streams, strict=True):
                for g in await redis.xinfo_groups(stream):
                    if g["name"] == streams.GROUP:
                        lag += g.get("lag") or 0
                        pending += g.get("pending") or 0
                        metrics.QUEUE_LAG_LANE.labels(*labels, lane).set(g.get("lag") or 0)
            metrics.QUEUE_LAG.labels(*labels).set(lag)
            metrics.QUEUE_PENDING.labels(*labels).set(pending)
        await asyncio.sleep(interval_s)
