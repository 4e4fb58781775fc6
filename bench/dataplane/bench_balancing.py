"""Least-outstanding versus round robin across two real tritonservers of unequal speed.

Both serve the ranker model; the slow one runs each forward pass 60 times (AGENTSCALE_MODEL_REPEAT: real
compute, no sleeps). The step runtime's ModelClient (the component under test) sends single samples from
8 concurrent callers for a fixed time; same load for each strategy."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from agentscale_worker.local import TritonServer
from agentscale_worker.triton import ModelClient

from .loadgen import closed_loop
from .stack import save, triton_config

SLOW_REPEAT = 60
CONCURRENCY = 8
DURATION_S = 10


async def measure(endpoints: str, strategy: str) -> dict[str, Any]:
    client = ModelClient("ranker", endpoints, strategy=strategy)
    await client.start()
    rng = np.random.default_rng(0)
    x = {
        "QUERY": rng.standard_normal((1, 64)).astype(np.float32),
        "ITEMS": rng.standard_normal((1, 32, 64)).astype(np.float32),
    }
    sent: dict[str, int] = {}
    orig = client.balancer.acquire

    def counting() -> str:
        e = orig()
        sent[e] = sent.get(e, 0) + 1
        return e

    client.balancer.acquire = counting  # type: ignore[method-assign]
    for _ in range(10):
        await client.infer_batch(x)
    sent.clear()
    r = await closed_loop(lambda i: client.infer_batch(x), CONCURRENCY, DURATION_S)
    await client.close()
    r["sent"] = sent
    return r


def main() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="agentscale-lb-"))
    cfg = {"ranker": triton_config("ranker", batching=False)}
    fast = TritonServer(work / "fast", models=["ranker"], config_overrides=cfg).start()
    slow = TritonServer(work / "slow", models=["ranker"], config_overrides=cfg, repeat=SLOW_REPEAT).start()
    try:
        eps = f"{fast.grpc_url},{slow.grpc_url}"
        out: dict[str, Any] = {
            "slow_repeat": SLOW_REPEAT,
            "concurrency": CONCURRENCY,
            "duration_s": DURATION_S,
        }
        for strategy in ("round-robin", "least-outstanding", "power-of-two"):
            r = asyncio.run(measure(eps, strategy))
            r["slow_share"] = r["sent"].get(slow.grpc_url, 0) / max(1, sum(r["sent"].values()))
            print(strategy, r, flush=True)
            out[strategy] = r
        out["p95_reduction"] = 1 - out["least-outstanding"]["p95_ms"] / out["round-robin"]["p95_ms"]
        print(f"least-outstanding p95 is {out['p95_reduction']:.0%} lower than round robin (target >= 30%)")
        save("balancing", out)
        return out
    finally:
        fast.stop()
        slow.stop()


if __name__ == "__main__":
    main()
