"""End to end through gateway, Redis Streams, step workers and a real tritonserver (CPU)."""

from __future__ import annotations

import asyncio

import pytest
from agentscale_harness.local import RedisServer, TritonServer
from agentscale_worker.examples import VALIDATORS, WORKFLOWS, run_local, sample_input

from .conftest import assert_close, example_flow

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
async def test_workflow_matches_direct_computation(
    workflow: str, redis_server: RedisServer, triton: TritonServer
) -> None:
    async with example_flow(
        redis_server, triton, workflow, validator=VALIDATORS[workflow], batch_max_size=8, batch_max_wait_ms=5
    ) as flow:
        inputs = [sample_input(workflow, seed) for seed in range(12)]
        replies = await asyncio.gather(
            *(flow.post("/v1/runs/sync", {"input": x, "timeout_ms": 60_000}) for x in inputs)
        )
        for x, (status, _, body) in zip(inputs, replies, strict=True):
            assert status == 200, body
            assert body["status"] == "done"
            assert_close(body["output"], await run_local(workflow, x))
        # several samples per Triton request: the workers really batched
        sizes = [n for w in flow.workers if w.model for n in w.model.batch_sizes]
        assert sum(sizes) == 12 * sum(1 for w in flow.workers if w.model)
        assert max(sizes) > 1, sizes


async def test_submit_then_poll(redis_server: RedisServer, triton: TritonServer) -> None:
    workflow = "voice-assistant"
    async with example_flow(redis_server, triton, workflow, validator=VALIDATORS[workflow]) as flow:
        x = sample_input(workflow, 3)
        status, _, body = await flow.post("/v1/runs", {"input": x})
        assert status == 202 and body["status"] == "queued"
        run_id = body["run_id"]
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            code, state = await flow.get(f"/v1/runs/{run_id}")
            assert code == 200
            if state["status"] != "queued" or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        assert state["status"] == "done", state
        assert_close(state["output"], await run_local(workflow, x))
        code, missing = await flow.get("/v1/runs/does-not-exist")
        assert code == 404 and "not found" in missing["error"]
