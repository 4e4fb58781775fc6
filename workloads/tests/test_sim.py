"""The SIMULATED model server: the real runtime client talks to it; latency follows the profile."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from agentscale_harness.sim import Profile, start
from agentscale_worker.triton import ModelClient


def test_profile_is_linear_in_batch() -> None:
    p = Profile(base_ms=2.0, per_sample_ms=0.5)
    assert p.service_s(1) == 0.0025 and p.service_s(10) == 0.007 and p.service_s(10, speed=2) == 0.014


async def test_runtime_client_against_simulated_replicas_of_unequal_speed(tmp_path: object) -> None:
    fast, fast_models, fast_port = await start(["ranker"], 0, None, speed=1.0)
    slow, slow_models, slow_port = await start(["ranker"], 0, None, speed=20.0)
    client = ModelClient(
        "ranker", f"127.0.0.1:{fast_port},127.0.0.1:{slow_port}", strategy="least-outstanding"
    )
    await client.start()
    try:
        x = {"QUERY": np.zeros((3, 64), np.float32), "ITEMS": np.zeros((3, 32, 64), np.float32)}
        out = await client.infer_batch(x)
        assert out["SCORES"].shape == (3, 32) and not out["SCORES"].any()

        async def caller() -> None:  # closed loop: a caller sends its next request when the last returns
            for _ in range(10):
                await client.infer_batch(x)

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(4)))
        assert time.perf_counter() - t0 >= 10 * Profile.load(None, "ranker").service_s(3)
        served_fast = sum(fast_models["ranker"].batches)
        served_slow = sum(slow_models["ranker"].batches)
        assert served_fast + served_slow == 41 * 3
        assert served_fast > served_slow  # the balancer shifted load to the fast replica
    finally:
        await client.close()
        await fast.stop(None)
        await slow.stop(None)
