"""A step at zero replicas: the gateway reports its lag (no worker is there to), holds a synchronous run until
a worker appears, and the lag is right even when Redis cannot tell it. Real redis-server."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from agentscale_harness.local import RedisServer, wait_until
from agentscale_worker import metrics, queue_stats, streams
from agentscale_worker.config import Graph
from agentscale_worker.handler import load_handler
from agentscale_worker.runtime import StepWorker
from agentscale_worker.streams import redis_client

from .conftest import start_flow

H = "tests.handlers"
TWO = Graph.from_dict({"steps": {"a": {"next": ["b"]}, "b": {"next": []}}, "slo": {"p95LatencyMs": 30000}})


def lag_of(workflow: str, step: str) -> float:
    return float(metrics.QUEUE_LAG.labels("test", workflow, step)._value.get())


async def test_gateway_reports_the_lag_of_a_step_at_zero_and_holds_the_run_until_a_worker_comes(
    redis_server: RedisServer,
) -> None:
    handlers = {"a": f"{H}:poison", "b": f"{H}:poison"}
    async with start_flow(redis_server, "zero", handlers, TWO, skip_steps=("b",)) as f:
        # Synchronous runs sent while step b has no worker: they wait (30 s timeout), they do not fail.
        runs = [asyncio.create_task(f.post("/v1/runs/sync", {"input": {"n": i}})) for i in range(5)]

        async def b_lagging() -> bool:
            return lag_of("zero", "b") == 5

        await wait_until(b_lagging, 20, 0.2, "the gateway's agentscale_queue_lag for step b reaches 5")
        assert lag_of("zero", "a") == 0  # a has its worker and nothing waits there
        assert not any(r.done() for r in runs), "a run failed or returned while its step had no worker"

        # The controller's wake-up: a worker for b starts; every held run is answered.
        worker = StepWorker(
            replace(f.workers[0].settings, step="b", consumer="b-late"), load_handler(f"{H}:poison")
        )
        await worker.start()
        f.workers.append(worker)
        replies = await asyncio.gather(*runs)
        assert [code for code, _, _ in replies] == [200] * 5, replies
        assert sorted(body["output"]["b"]["n"] for _, _, body in replies) == list(range(5))

        async def b_drained() -> bool:
            return lag_of("zero", "b") == 0

        await wait_until(b_drained, 20, 0.2, "the lag of step b back to 0")


async def test_lag_counts_undelivered_entries_when_redis_reports_none(redis_server: RedisServer) -> None:
    """Deleting entries (what trim_acked does with acknowledged ones, or an XDEL of an undelivered one) can
    leave Redis unable to compute a group's lag; the count must still be the entries not yet delivered."""
    r = redis_client(redis_server.url)
    stream = "lagtest"
    await streams.ensure_group(r, stream)
    ids = [await r.xadd(stream, {"n": str(i)}) for i in range(10)]
    delivered = await r.xreadgroup(streams.GROUP, "c1", {stream: ">"}, count=4)
    got = [msg_id for _, entries in delivered for msg_id, _ in entries]
    assert got == ids[:4]
    await r.xack(stream, streams.GROUP, *got)
    await r.xdel(stream, *got)
    await r.xdel(stream, ids[7])  # an undelivered entry removed: 5 remain to deliver
    group = next(g for g in await r.xinfo_groups(stream) if g["name"] == streams.GROUP)
    assert await queue_stats.group_lag(r, stream, group) == 5, group
    assert await queue_stats.step_lag_once(r, [stream]) == 5
    # A lane whose group does not exist yet: everything in it waits.
    await r.xadd("nogroup", {"n": "1"})
    await r.xadd("nogroup", {"n": "2"})
    assert await queue_stats.step_lag_once(r, [stream, "nogroup"]) == 7
    await r.aclose()
