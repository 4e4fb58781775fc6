"""Queue statistics: the consumer group's lag and pending count per step (and lag per lane) as metrics, every
``interval_s``; what dashboards and the resource controller read. The same loop deletes what every consumer
group has acknowledged (``streams.trim_acked``). The gateway reports the workflow's Redis memory
(:func:`workflow_memory_once`) and every step's lag (:func:`steps_lag_loop`): a step scaled to zero has no
worker to report its own, and its lag is what wakes it (the resource controller reads the max over the
gateway's and the workers' series)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

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
                        lane_lag = await group_lag(redis, stream, g)
                        lag += lane_lag
                        pending += g.get("pending") or 0
                        metrics.QUEUE_LAG_LANE.labels(*labels, lane).set(lane_lag)
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


LAG_SCAN_MAX = 10_000  # entries counted by hand when Redis cannot tell a group's lag


async def group_lag(redis: aioredis.Redis, stream: str, group: dict[str, Any]) -> int:
    """Entries of ``stream`` not yet delivered to ``group`` (one of ``XINFO GROUPS``' answers).

    Redis reports the lag as nil when entries were deleted after the group's last delivery (the acknowledged
    entries ``trim_acked`` removes); reading that as 0 would hide a backlog from the controller, so the
    entries after the last delivered id are counted instead (at most ``LAG_SCAN_MAX``)."""
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    after = await redis.xrange(stream, min=f"({group['last-delivered-id']}", max="+", count=LAG_SCAN_MAX)
    return len(after or [])


async def step_lag_once(redis: aioredis.Redis, lane_streams: list[str]) -> int:
    """The step's lag over its lanes; a lane without the consumer group counts all its entries."""
    total = 0
    for stream in lane_streams:
        groups = await redis.xinfo_groups(stream)
        group = next((g for g in groups if g["name"] == streams.GROUP), None)
        total += await group_lag(redis, stream, group) if group else int(await redis.xlen(stream))
    return total


async def steps_lag_loop(
    redis: aioredis.Redis,
    p: str,
    graph: Graph,
    labels: tuple[str, str],
    stopping: Callable[[], bool],
    interval_s: float = 2.0,
) -> None:
    """The gateway's report of every step's lag (``agentscale_queue_lag``), every ``interval_s``."""
    while not stopping():
        for step in graph.steps:
            with contextlib.suppress(*streams.REDIS_ERRORS, ResponseError):
                lag = await step_lag_once(redis, streams.step_streams(p, step, LANES))
                metrics.QUEUE_LAG.labels(*labels, step).set(lag)
        await asyncio.sleep(interval_s)
