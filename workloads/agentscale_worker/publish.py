"""The two ends of a message, each one atomic Lua script: publish its output to the next steps (COMPLETE) or
move it to the dead-letter stream (FAIL). Both acknowledge the message; see ``streams`` for the scripts."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis

from . import streams
from .config import Settings
from .lanes import lane_of

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.settings = settings
        g = settings.graph
        self.prefix = streams.prefix(settings.namespace, settings.workflow)
        self.next = g.next_of(settings.step)
        self.npreds = [len(g.predecessors(n)) for n in self.next]
        self.nsinks = len(g.sinks)
        self._complete = redis.register_script(streams.COMPLETE)
        self._fail = redis.register_script(streams.FAIL)

    def lane(self, fields: dict[str, str]) -> str:
        """A message's lane, from the priority it carries (the run's, set at the gateway)."""
        try:
            prio = int(fields.get("prio", ""))
        except ValueError:
            prio = self.settings.priority
        return lane_of(prio, self.settings.priority)

    async def complete(
        self, msg_id: str, fields: dict[str, str], run_id: str, data: str, stream: str | None = None
    ) -> int:
        """Publish an output (to the next steps' streams of the run's lane) and ack it on ``stream``.

        Returns 0 (a duplicate: already published), 1 (published), 2 (the run had already finished) or
        3 (published, and it finished the run)."""
        p, s = self.prefix, self.settings
        lane = self.lane(fields)
        ks = [
            stream or streams.step_stream(p, s.step, lane),
            streams.done(p, run_id, s.step),
            streams.run(p, run_id),
            streams.results(p),
            streams.inflight(p),
        ]
        for n in self.next:
            ks += [streams.step_stream(p, n, lane), streams.join(p, run_id, n)]
        args: list[Any] = [
            streams.GROUP,
            msg_id,
            run_id,
            s.step,
            data,
            fields.get("t0", "0"),
            fields.get("prio", str(s.priority)),
        ]
        args += [s.result_ttl_s, s.stream_maxlen, self.nsinks, f"{time.time():.6f}", *self.npreds]
        return int(await self._complete(keys=ks, args=args))

    async def dead_letter(
        self, msg_id: str, fields: dict[str, str], run_id: str, error: str, attempts: int, stream: str = ""
    ) -> int:
        p, s = self.prefix, self.settings
        ks = [
            stream or streams.step_stream(p, s.step, self.lane(fields)),
            streams.dead_letter(p, s.step),
            streams.run(p, run_id),
            streams.results(p),
            streams.inflight(p),
        ]
        ks.append(streams.done(p, run_id, s.step))
        data = fields.get("data", "")[:100_000]
        args: list[str | int] = [streams.GROUP, msg_id, run_id, s.step, error[-4000:], data, attempts]
        args += [s.result_ttl_s, s.stream_maxlen, f"{time.time():.6f}", s.dlq_maxlen]
        log.error("run %s step %s dead-lettered after %d attempts: %s", run_id, s.step, attempts, error)
        return int(await self._fail(keys=ks, args=args))
