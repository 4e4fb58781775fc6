"""The Lua scripts against a real Redis: joins, idempotent publish, micro-batching against a stand-in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from agentscale_harness.local import RedisServer
from agentscale_worker import streams
from agentscale_worker.batching import BatchWindow
from agentscale_worker.examples import graph
from agentscale_worker.runtime import StepWorker
from agentscale_worker.streams import ensure_group, redis_client
from agentscale_worker.triton import Arrays, ModelClient

from .conftest import base_settings


async def _noop(ctx: Any, payload: Any) -> Any:
    return payload


async def test_join_publishes_once_when_all_predecessors_arrive(redis_server: RedisServer) -> None:
    g = graph("driving-perception")
    r = redis_client(redis_server.url)
    p = streams.prefix("test", "wf")
    base = base_settings(redis_server, "wf", g)
    track = StepWorker(base_settings(redis_server, "wf", g, step="track"), _noop)
    depth = StepWorker(base_settings(redis_server, "wf", g, step="estimate-depth"), _noop)
    for w in (track, depth):
        await ensure_group(r, w.stream)
    plan = streams.step_stream(p, "plan")
    await r.hset(streams.run(p, "r1"), "status", "queued")
    ids = {}
    for w in (track, depth):
        ids[w] = await r.xadd(w.stream, {"run": "r1", "data": "{}", "t0": "0", "prio": "0", "from": "detect"})
        await r.xreadgroup(streams.GROUP, "c", {w.stream: ">"})
    assert await track.publisher.complete(ids[track], {"t0": "0"}, "r1", '{"tracks":[1]}') == 1
    assert await r.xlen(plan) == 0  # waiting for the other branch
    assert (
        await track.publisher.complete(ids[track], {"t0": "0"}, "r1", '{"tracks":[1]}') == 0
    )  # duplicate: no-op
    assert await depth.publisher.complete(ids[depth], {"t0": "0"}, "r1", '{"depths":[2.5]}') == 1
    entries = await r.xrange(plan)
    assert len(entries) == 1
    assert json.loads(entries[0][1]["data"]) == {
        "track": {"tracks": [1]},
        "estimate-depth": {"depths": [2.5]},
    }
    assert entries[0][1]["from"] == "*"
    assert await depth.publisher.complete(ids[depth], {"t0": "0"}, "r1", '{"depths":[2.5]}') == 0
    assert await r.xlen(plan) == 1
    for w in (track, depth):
        assert (await r.xpending(w.stream, streams.GROUP))["pending"] == 0
        await w.drain()
    assert base.graph.sinks == ("plan",)
    await r.aclose()


async def test_sink_completes_run_once(redis_server: RedisServer) -> None:
    g = graph("shop-recs")
    r = redis_client(redis_server.url)
    w = StepWorker(base_settings(redis_server, "wf", g, step="rank"), _noop)
    await ensure_group(r, w.stream)
    await r.set(streams.inflight(w.prefix), 1)
    await r.hset(streams.run(w.prefix, "r9"), "status", "queued")
    mid = await r.xadd(w.stream, {"run": "r9", "data": "{}"})
    await r.xreadgroup(streams.GROUP, "c", {w.stream: ">"})
    assert await w.publisher.complete(mid, {"t0": "0"}, "r9", '{"items":[]}') == 3  # published and finished
    assert await w.publisher.complete(mid, {"t0": "0"}, "r9", '{"items":[]}') == 0
    run = await r.hgetall(streams.run(w.prefix, "r9"))
    assert run["status"] == "done" and json.loads(run["result"]) == {"rank": {"items": []}}
    assert await r.xlen(streams.results(w.prefix)) == 1
    assert await r.get(streams.inflight(w.prefix)) == "0"
    await w.drain()
    await r.aclose()


class _Recorder(ModelClient):
    """Stands in for Triton in this unit test of the batching loop: doubles its input."""

    def __init__(self, batching: BatchWindow) -> None:
        super().__init__("m", "127.0.0.1:1", batching=batching)
        self.seen: list[int] = []

    async def infer_batch(self, batch: Arrays) -> Arrays:
        self.seen.append(len(batch["X"]))
        await asyncio.sleep(0)
        return {"Y": batch["X"] * 2}


async def test_micro_batching_groups_concurrent_samples() -> None:
    client = _Recorder(BatchWindow(max_size=4, max_wait_s=0.05))
    await client.start()
    outs = await asyncio.gather(*(client.infer({"X": np.array([i], dtype=np.float32)}) for i in range(10)))
    assert [float(o["Y"][0]) for o in outs] == [2.0 * i for i in range(10)]
    assert client.seen[:2] == [4, 4] and sum(client.seen) == 10
    one = await client.infer(
        {"X": np.array([7], dtype=np.float32)}
    )  # a lone sample waits max_wait, then goes
    assert float(one["Y"][0]) == 14.0 and client.seen[-1] == 1
    await client.close()
