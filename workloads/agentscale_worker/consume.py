"""Consuming a step's streams: strict priority across the lanes, one XREADGROUP loop per worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import metrics, streams
from .backoff import backoff_s
from .inflight import InFlight

log = logging.getLogger(__name__)


def entries_of(resp: Any) -> list[tuple[str, str, dict[str, str]]]:
    """An XREADGROUP reply as (stream, id, fields) entries."""
    return [(stream, i, f) for stream, batch in (resp or []) for i, f in batch]


async def consume(
    redis: aioredis.Redis,
    consumer: str,
    inflight: InFlight,
    stopping: asyncio.Event,
    recreate_groups: Callable[[], Awaitable[None]],
    labels: metrics.StepLabels,
) -> None:
    """Strict priority across the lanes: take what the higher lanes hold before looking lower.

    While there is work, each round reads the lanes in order without blocking. Once a round finds all
    of them empty, block on all lanes at once (one entry each) until something arrives; an entry read
    beyond the free slots is held (it is ours in Redis and heartbeated) and starts first."""
    lanes = inflight.streams
    failures = 0
    scan = True
    while not stopping.is_set():
        free = inflight.free
        if free <= 0:
            inflight.slot.clear()
            await inflight.slot.wait()
            scan = True
            continue
        if inflight.held:
            inflight.start_held()
            continue
        try:
            got = 0
            if scan:
                for stream in lanes:
                    resp = await redis.xreadgroup(streams.GROUP, consumer, {stream: ">"}, count=free - got)
                    got += inflight.take(entries_of(resp), free - got)
                    if got >= free:
                        break
            if not got:
                resp = await redis.xreadgroup(
                    streams.GROUP, consumer, dict.fromkeys(lanes, ">"), count=1, block=1000
                )
                got = inflight.take(entries_of(resp), free)
            scan = got > 0
            failures = 0
        except ResponseError as e:
            if "NOGROUP" in str(e):  # the stream was lost (Redis without persistence): recreate
                await recreate_groups()
                continue
            raise
        except streams.REDIS_ERRORS as e:
            failures += 1
            metrics.ERRORS.labels(*labels, "redis").inc()
            log.warning("reading the streams of step %s failed (%s); retrying", labels.step, e)
            await asyncio.sleep(backoff_s(failures, 0.1, 2.0))
            continue
