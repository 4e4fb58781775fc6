"""Priority lanes: a run above the workflow's priority overtakes queued ones; one below waits for them."""

from __future__ import annotations

from agentscale_harness.local import RedisServer, wait_until
from agentscale_worker import metrics, streams
from agentscale_worker.config import Graph
from agentscale_worker.consume import entries_of
from agentscale_worker.handler import load_handler
from agentscale_worker.lanes import LANES, lane_of
from agentscale_worker.runtime import StepWorker
from agentscale_worker.streams import redis_client

from .conftest import base_settings, start_flow

H = "tests.handlers"
TWO_STEPS = Graph.from_dict({"steps": {"a": {"next": ["b"]}, "b": {}}, "priority": "normal"})


def test_lane_is_relative_to_the_workflow_priority() -> None:
    assert [lane_of(p, 2) for p in (4, 3, 2, 1, 0)] == ["high", "high", "normal", "low", "low"]
    assert lane_of(-5, -5) == "normal"


async def test_higher_priority_runs_overtake_the_queue(redis_server: RedisServer) -> None:
    hs = {"a": f"{H}:gated_echo", "b": f"{H}:gated_echo"}
    async with start_flow(redis_server, "prio", hs, TWO_STEPS, concurrency=1, priority=2) as flow:
        r = redis_client(redis_server.url)

        async def submit(name: str, priority: int) -> str:
            code, _, body = await flow.post("/v1/runs", {"input": {"n": name}, "priority": priority})
            assert code == 202, body
            return str(body["run_id"])

        names: dict[str, str] = {}
        names[await submit("n0", 2)] = "n0"

        async def first_taken() -> bool:
            return (
                int(
                    (await r.xpending(streams.step_stream(flow.gateway.prefix, "a"), streams.GROUP))[
                        "pending"
                    ]
                )
                == 1
            )

        await wait_until(first_taken, 10, what="the worker holds n0")
        for name, prio in [("l1", 0), ("l2", 1), ("n1", 2), ("n2", 2), ("h1", 3), ("h2", 4)]:
            names[await submit(name, prio)] = name

        def lag_by_lane() -> list[float]:
            return [metrics.QUEUE_LAG_LANE.labels("test", "prio", "a", lane)._value.get() for lane in LANES]

        await wait_until(lambda: lag_by_lane() == [2, 2, 2], 10, what="queue lag per lane exported")
        assert metrics.QUEUE_LAG.labels("test", "prio", "a")._value.get() == 6
        await r.set("gate", "1")

        async def finished() -> list[str]:
            return [names[f["run"]] for _, f in await r.xrange(streams.results(flow.gateway.prefix))]

        async def all_finished() -> bool:
            return len(await finished()) == 7

        await wait_until(all_finished, 30, 0.05, "all runs finished")
        # n0 was already being worked on; then the high lane, in arrival order; normal; low last
        assert await finished() == ["n0", "h1", "h2", "n1", "n2", "l1", "l2"]
        # the next step's messages kept the run's lane (counted as added: acknowledged entries are deleted)
        for lane in ("high", "low"):
            info = await r.xinfo_stream(streams.step_stream(flow.gateway.prefix, "b", lane))
            assert info["entries-added"] == 2 and info["length"] == 0
        await r.aclose()


async def test_entries_read_beyond_the_free_slots_are_held_highest_lane_first(
    redis_server: RedisServer,
) -> None:
    """One blocking read over every lane can return more than the free slots: the rest wait, in lane order."""
    s = base_settings(redis_server, "prio", TWO_STEPS, step="a", priority=2)
    w = StepWorker(s, load_handler(f"{H}:gated_echo"))
    started: list[str] = []
    w.inflight.spawn = lambda stream, msg_id, fields, before: started.append(msg_id)  # type: ignore[method-assign]
    high, normal, low = w.streams
    resp = [(low, [("3-0", {})]), (normal, [("2-0", {})]), (high, [("1-0", {}), ("1-1", {})])]
    assert w.inflight.take(entries_of(resp), 2) == 4
    assert started == ["1-0", "1-1"]
    assert [(st, i) for st, i, _ in w.inflight.held] == [(normal, "2-0"), (low, "3-0")]
    assert w.inflight.ids[normal] == {"2-0"} and w.inflight.ids[low] == {"3-0"}  # heartbeated while held
    await w.redis.aclose()
