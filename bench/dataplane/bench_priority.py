"""Priority lanes under overload: latency of the few urgent runs while the step is saturated.

One-step workflow (encode -> encoder-large, no batching), one worker with one slot, against two model servers:
a simulated one (sleeps, little CPU) and the real tritonserver (sharing the 2 cores with everything else).
First the capacity is measured (closed loop through the gateway). Then the same Poisson arrival sequence at
1.25x capacity for 20 s, 20% of the runs tagged urgent, twice in the same processes:
- baseline: every run at the workflow's priority (one lane, first come first served);
- lanes: the urgent runs at priority 4 (critical; the workflow is normal), so they take the high lane.
The SLO is set out of reach so admission sheds nothing: this measures queue order, not shedding."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp
from agentscale_harness.local import free_port
from agentscale_worker.config import Graph
from agentscale_worker.examples import sample_input

from .loadgen import closed_loop, sync_run_op
from .openloop import open_loop
from .stack import percentile, save, services, wait_port

GRAPH = Graph.from_dict(
    {"steps": {"encode": {"model": "encoder-large", "next": []}}, "slo": {"p95LatencyMs": 600000}}
)
URGENT_SHARE = 0.2
OVERLOAD = 1.25
DURATION_S = 20
SLOTS = 1
HANDLER = "bench.dataplane.handlers:encode_large"
# simulated service time, typed in (not results/profile.json): bench_balancing's SIM_PROFILE x4,
# 20 ms + 3.2 ms per sample, about 23 ms a run, so the gateway and the load generator have the CPU to spare;
# every published priority result (results/priority.json, ``sim_profile``) used these numbers
SIM_PROFILE = {"base_ms": 20.0, "per_sample_ms": 3.2, "max_batch": 64}


async def capacity(url: str) -> float:
    bodies = [{"input": sample_input("shop-recs", i)} for i in range(64)]
    async with aiohttp.ClientSession() as s:
        op = sync_run_op(s, url, bodies)
        await closed_loop(op, 8, 3)  # warm up
        return float((await closed_loop(op, 16, 8))["rps"])


async def overload(url: str, rate: float, lanes: bool, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    urgent = [rng.random() < URGENT_SHARE for _ in range(int(rate * DURATION_S * 2) + 1)]
    lat: dict[str, list[float]] = {"urgent": [], "other": []}
    errors = 0
    # no connection limit: aiohttp's default pool (100) would queue requests in the client, first come first
    # served, in front of the gateway
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300), connector=connector) as s:

        async def op(i: int) -> None:
            nonlocal errors
            body: dict[str, Any] = {"input": sample_input("shop-recs", i), "timeout_ms": 290_000}
            if lanes and urgent[i]:
                body["priority"] = 4
            t = time.perf_counter()
            async with s.post(url + "/v1/runs/sync", json=body) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                    return
            lat["urgent" if urgent[i] else "other"].append((time.perf_counter() - t) * 1000)

        agg = await open_loop(op, rate, DURATION_S, seed=seed, drain_s=240)
    out: dict[str, Any] = {"offered_rps": rate, "sent": agg["sent"], "errors": errors + int(agg["errors"])}
    for k, v in lat.items():
        out[k] = {"n": len(v), "p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95)}
    return out


def measure(url: str) -> dict[str, Any]:
    cap = asyncio.run(capacity(url))
    rate = cap * OVERLOAD
    print(f"capacity {cap:.1f} runs/s; offering {rate:.1f} runs/s for {DURATION_S} s", flush=True)
    base = asyncio.run(overload(url, rate, lanes=False))
    print(f"baseline (one lane) {base}", flush=True)
    lanes = asyncio.run(overload(url, rate, lanes=True))
    print(f"lanes {lanes}", flush=True)
    ratio = base["urgent"]["p95_ms"] / lanes["urgent"]["p95_ms"]
    print(f"urgent p95: one lane {base['urgent']['p95_ms']:.0f} ms, lanes {lanes['urgent']['p95_ms']:.0f} ms "
          f"({ratio:.1f}x lower)", flush=True)  # fmt: skip
    return {"capacity_rps": cap, "baseline": base, "lanes": lanes, "urgent_p95_ratio": ratio}


def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with services(["encoder-large"], batching=False) as (redis, triton, stack):
        env = stack.env(GRAPH, redis, "bench-priority", AGENTSCALE_PRIORITY="normal")
        url = stack.gateway(env)
        # sim: the step waits on a simulated model server (sleeps, little CPU)
        profile = stack.workdir / "profile.json"
        profile.write_text(json.dumps({"models": {"encoder-large": SIM_PROFILE}}))
        port = free_port()
        sim = stack.spawn(
            ["--model", "encoder-large", "--port", str(port), "--profile", str(profile)],
            env,
            "sim",
            module="agentscale_harness.sim",
        )
        wait_port(port, sim)
        worker = stack.spawn(
            ["step", "--handler", HANDLER], worker_env(env, f"127.0.0.1:{port}"), "encode-sim"
        )
        results["sim"] = measure(url)
        worker.terminate()
        worker.wait(30)
        # triton: the real server
        stack.spawn(["step", "--handler", HANDLER], worker_env(env, triton.grpc_url), "encode-triton")
        results["triton"] = measure(url)
    out = {
        "slots": SLOTS,
        "overload": OVERLOAD,
        "urgent_share": URGENT_SHARE,
        "duration_s": DURATION_S,
        "sim_profile": SIM_PROFILE,
        **results,
    }
    save("priority", out)
    return out


def worker_env(env: dict[str, str], triton_host: str) -> dict[str, str]:
    return dict(
        env,
        AGENTSCALE_STEP="encode",
        AGENTSCALE_MODEL="encoder-large",
        AGENTSCALE_TRITON_HOST=triton_host,
        AGENTSCALE_CONCURRENCY=str(SLOTS),
    )


if __name__ == "__main__":
    main()
