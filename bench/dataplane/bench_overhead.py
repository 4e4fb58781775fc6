"""Gateway + queue overhead per request at moderate load, against calling Triton directly.

One-step workflow (encode -> query-encoder, real tritonserver). Direct: the step runtime's Triton client
sends the same single sample to Triton. Through the stack: HTTP to the gateway, Redis Stream, worker,
Triton, results stream, HTTP response. Same concurrency (4 callers, closed loop), same processes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from agentscale_worker.examples import sample_input
from agentscale_worker.examples.common import text_tensor
from agentscale_worker.triton import ModelClient

from .bench_batching import GRAPH
from .loadgen import closed_loop, sync_run_op
from .stack import save, services

CONCURRENCY = 4
DURATION_S = 10


async def direct(url: str) -> dict[str, float]:
    client = ModelClient("query-encoder", url)
    await client.start()
    inputs = [{"QUERY_TEXT": text_tensor(sample_input("shop-recs", i)["query"])[None]} for i in range(64)]
    for x in inputs[:10]:
        await client.infer_batch(x)
    r = await closed_loop(lambda i: client.infer_batch(inputs[i % 64]), CONCURRENCY, DURATION_S)
    await client.close()
    return r


async def gateway(url: str) -> dict[str, float]:
    bodies = [{"input": sample_input("shop-recs", i)} for i in range(64)]
    async with aiohttp.ClientSession() as s:
        op = sync_run_op(s, url, bodies)
        for i in range(20):
            await op(i)
        return await closed_loop(op, CONCURRENCY, DURATION_S)


def main() -> dict[str, Any]:
    with services(["query-encoder"], batching=True) as (redis, triton, stack):
        env = stack.env(GRAPH, redis, "bench-overhead")
        url = stack.gateway(env)
        wenv = dict(
            env,
            AGENTSCALE_STEP="encode",
            AGENTSCALE_MODEL="query-encoder",
            AGENTSCALE_TRITON_HOST=triton.grpc_url,
        )
        stack.spawn(["step", "--handler", "agentscale_worker.examples.recommendation:encode"], wenv, "encode")
        d = asyncio.run(direct(triton.grpc_url))
        g = asyncio.run(gateway(url))
    out = {
        "concurrency": CONCURRENCY,
        "direct": d,
        "gateway": g,
        "overhead_p50_ms": g["p50_ms"] - d["p50_ms"],
        "overhead_p95_ms": g["p95_ms"] - d["p95_ms"],
    }
    print(f"direct {d}\ngateway {g}")
    print(f"overhead p50 {out['overhead_p50_ms']:.2f} ms, p95 {out['overhead_p95_ms']:.2f} ms")
    save("overhead", out)
    return out


if __name__ == "__main__":
    main()
