"""Queue statistics: the consumer group's lag and pending count per step (and lag per lane) as metrics, every
``interval_s``; what dashboards and the resource controller read. The same loop deletes what every consumer
group has acknowledged (``streams.trim_acked``). The gateway reports the workflow's Redis memory
(:func:`workflow_memory_once`)."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import metrics, streams
from .config import Graph
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
                groups = await redis.xinfo_groups(stream)
                await streams.trim_acked(redis, stream, groups)
                for g in groups:
                    if g["name"] == streams.GROUP:
                        lag += g.get("lag") or 0
                        pending += g.get("pending") or 0
                        metrics.QUEUE_LAG_LANE.labels(*labels, lane).set(g.get("lag") or 0)
            metrics.QUEUE_LAG.labels(*labels).set(lag)
            metrics.QUEUE_PENDING.labels(*labels).set(pending)
        await asyncio.sleep(interval_s)


def workflow_streams(p: str, graph: Graph) -> dict[str, str]:
    """The workflow's streams by the short name the metrics use (``step:a``, ``step:a:high``, ``dlq:a``,
    ``results``) -> key."""
    out: dict[str, str] = {}
    for step in graph.steps:
        for stream in streams.step_streams(p, step, LANES):
            out[stream.removeprefix(p)] = stream
        out[f"dlq:{step}"] = streams.dead_letter(p, step)
    out["results"] = streams.results(p)
    return out


async def workflow_memory_once(redis: aioredis.Redis, p: str, graph: Graph, labels: tuple[str, str]) -> int:
    """Length and memory of every stream of the workflow, their total, and the server's used_memory, as
    metrics; returns the total bytes. Streams are where payloads live; run records expire (result TTL)."""
    total = 0
    for name, key in workflow_streams(p, graph).items():
        length = int(await redis.xlen(key))
        size = int(await redis.memory_usage(key) or 0) if length else 0
        total += size
        metrics.REDIS_STREAM_LENGTH.labels(*labels, name).set(length)
        metrics.REDIS_STREAM_BYTES.labels(*labels, name).set(size)
    metrics.REDIS_WORKFLOW_BYTES.labels(*labels).set(total)
    info = await redis.info("memory")
    metrics.REDIS_USED_MEMORY.labels(*labels).set(int(info.get("used_memory", 0)))
    return total
