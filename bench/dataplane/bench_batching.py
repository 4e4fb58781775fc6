"""Dynamic batching on versus off: Locust (headless) drives the gateway of a one-step workflow (encode ->
query-encoder on a real tritonserver, CPU). "on": Triton dynamic batching (preferred 16/32, 2 ms) and the
worker's micro-batching (16, 2 ms). "off": no dynamic_batching in the config, worker batch size 1.
Same processes, same load levels; compare throughput at equal p95."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentscale_worker.config import Graph

from .stack import ROOT, save, services

GRAPH = Graph.from_dict(
    {"steps": {"encode": {"model": "query-encoder", "next": []}}, "slo": {"p95LatencyMs": 10000}}
)
USERS = [4, 16, 48]
DURATION_S = 12


def locust(host: str, users: int, workdir: Path) -> dict[str, float]:
    prefix = workdir / f"locust-{users}"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{DURATION_S}s", "--host", host, "--csv", str(prefix),
        "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    env = {"AGENTSCALE_BENCH_WORKFLOW": "shop-recs", "PYTHONPATH": str(ROOT / "workloads")}
    subprocess.run(cmd, env={**os.environ, **env}, check=False, capture_output=True, timeout=DURATION_S + 60)
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {
        "users": users,
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
    }


def triton_direct(url: str, batching: bool) -> dict[str, float]:
    """16 clients sending single samples straight to Triton (no gateway, no queue)."""
    import asyncio

    import numpy as np
    from agentscale_worker.examples.common import word_tokens
    from agentscale_worker.triton import ModelClient

    from .loadgen import closed_loop

    async def go() -> dict[str, float]:
        client = ModelClient("query-encoder", url)
        await client.start()
        x = {"QUERY_TOKENS": word_tokens("red running shoes")[None]}
        await client.infer_batch(x)
        r = await closed_loop(lambda i: client.infer_batch(x), 16, 8)
        await client.close()
        return r

    r = asyncio.run(go())
    print(f"triton direct batching={'on' if batching else 'off'}: {r}", flush=True)
    _ = np
    return r


def run_mode(batching: bool) -> tuple[list[dict[str, float]], dict[str, float]]:
    with services(["query-encoder"], batching=batching) as (redis, triton, stack):
        env = stack.env(GRAPH, redis, "bench-batching")
        url = stack.gateway(env)
        wenv = dict(
            env,
            AGENTSCALE_STEP="encode",
            AGENTSCALE_MODEL="query-encoder",
            AGENTSCALE_TRITON_HOST=triton.grpc_url,
            AGENTSCALE_CONCURRENCY="64",
            AGENTSCALE_BATCH_MAX_SIZE="16" if batching else "1",
            AGENTSCALE_BATCH_MAX_WAIT_MS="2" if batching else "0",
        )
        stack.spawn(["step", "--handler", "agentscale_worker.examples.recommendation:encode"], wenv, "encode")
        direct = triton_direct(triton.grpc_url, batching)
        locust(url, 4, stack.workdir)  # warm-up
        points = []
        for users in USERS:
            p = locust(url, users, stack.workdir)
            print(f"batching={'on' if batching else 'off'} users={users}: {p}", flush=True)
            points.append(p)
        return points, direct


def at_equal_p95(points: list[dict[str, float]], p95_ms: float) -> float:
    ok = [p["rps"] for p in points if p["p95_ms"] <= p95_ms and not p["failures"]]
    return max(ok, default=0.0)


def main() -> dict[str, Any]:
    off, direct_off = run_mode(False)
    on, direct_on = run_mode(True)
    # the reference p95: the worst p95 of the "off" curve's best point; compare both curves at that p95
    best_off = max(off, key=lambda p: p["rps"])
    bound = best_off["p95_ms"]
    ratio = at_equal_p95(on, bound) / max(1e-9, at_equal_p95(off, bound))
    direct_ratio = direct_on["rps"] / max(1e-9, direct_off["rps"])
    result = {
        "users": USERS, "duration_s": DURATION_S, "off": off, "on": on, "p95_bound_ms": bound, "ratio": ratio,
        "direct_off": direct_off, "direct_on": direct_on, "direct_ratio": direct_ratio,
    }  # fmt: skip
    print(f"gateway: throughput ratio on/off at p95 <= {bound} ms: {ratio:.2f}x (target >= 3x)")
    print(f"triton direct, 16 clients: {direct_ratio:.2f}x")
    save("batching", result)
    return result


if __name__ == "__main__":
    main()
