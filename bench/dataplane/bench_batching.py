"""Dynamic batching on versus off, end to end: Locust (headless, closed loop) drives the gateway of a one-step
workflow whose step calls ``encoder-large`` (25M-parameter numpy MLP, ~5 ms per single sample on one core) on
a real tritonserver (CPU). Same model, same instance count (1), BLAS pinned to 1 thread; the configs differ
only in the ``dynamic_batching`` block. Modes:

- ``off``: no dynamic_batching; worker micro-batching off (batch 1).
- ``on``: Triton dynamic batching (preferred 16/32, max queue delay 2 ms); worker micro-batching off, so
  every run is its own gRPC request and only Triton batches.
- ``on+client``: as ``on``, plus the worker's client-side micro-batching (16 samples, 2 ms).

All three stacks run side by side (idle ones cost no CPU) and every load level is run against each mode
in turn, so background load on this shared machine hits the modes alike. For each mode, Locust sweeps the
users; the comparison is the highest throughput whose p95 stays under a fixed bound (several bounds are
reported). Also: the same Triton driven directly (no gateway) by 1 and 16 concurrent clients sending single
samples."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from agentscale_worker.config import Graph

from .loadgen import closed_loop
from .stack import ROOT, save, services

MODEL = "encoder-large"
GRAPH = Graph.from_dict({"steps": {"encode": {"model": MODEL, "next": []}}, "slo": {"p95LatencyMs": 600000}})
HANDLER = "bench.dataplane.handlers:encode_large"
USERS = [1, 4, 8, 16, 32, 48, 64]
DURATION_S = 10
P95_BOUNDS_MS = [100.0, 200.0, 300.0]
P95_BOUND_MS = 200.0  # the headline bound
BLAS_1 = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MODES = {  # name -> (Triton dynamic batching, worker micro-batch size, worker max wait ms)
    "off": (False, 1, 0),
    "on": (True, 1, 0),
    "on+client": (True, 16, 2),
}


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
        "p99_ms": float(row["99%"]),
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
    }


def triton_direct(url: str, concurrency: int) -> dict[str, float]:
    """``concurrency`` clients sending single samples straight to Triton (no gateway, no queue)."""
    from agentscale_worker.triton import ModelClient

    async def go() -> dict[str, float]:
        client = ModelClient(MODEL, url)
        await client.start()
        x = {"QUERY_TOKENS": np.arange(16, dtype=np.int32)[None]}
        for _ in range(5):
            await client.infer_batch(x)
        r = await closed_loop(lambda i: client.infer_batch(x), concurrency, 6)
        await client.close()
        return r

    return asyncio.run(go())


def start_mode(name: str, stack_cm: contextlib.ExitStack) -> dict[str, Any]:
    """Start one mode's redis, tritonserver, gateway and worker; they stay up until ``stack_cm`` closes."""
    batching, size, wait_ms = MODES[name]
    os.environ.update(BLAS_1)  # tritonserver (and its Python-backend stub) inherit this
    redis, triton, stack = stack_cm.enter_context(services([MODEL], batching=batching))
    env = stack.env(GRAPH, redis, f"bench-batching-{name.replace('+', '-')}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "workloads"), str(ROOT)])
    url = stack.gateway(env)
    wenv = dict(
        env,
        AGENTSCALE_STEP="encode",
        AGENTSCALE_MODEL=MODEL,
        AGENTSCALE_TRITON_HOST=triton.grpc_url,
        AGENTSCALE_CONCURRENCY="128",
        AGENTSCALE_BATCH_MAX_SIZE=str(size),
        AGENTSCALE_BATCH_MAX_WAIT_MS=str(wait_ms),
    )
    stack.spawn(["step", "--handler", HANDLER], wenv, "encode")
    return {"url": url, "grpc": triton.grpc_url, "workdir": stack.workdir, "batching": batching,
            "worker_batch": [size, wait_ms]}  # fmt: skip


def run_modes() -> dict[str, dict[str, Any]]:
    """All modes up at once (idle ones cost no CPU); each load level runs against every mode in turn, so a
    change in background load (this machine is shared) hits every mode alike instead of one of them."""
    with contextlib.ExitStack() as cm:
        up = {name: start_mode(name, cm) for name in MODES}
        out: dict[str, dict[str, Any]] = {
            name: {
                "points": [],
                "direct": {},
                "triton_batching": u["batching"],
                "worker_batch": u["worker_batch"],
            }
            for name, u in up.items()
        }
        for c in (1, 16):
            for name, u in up.items():
                out[name]["direct"][c] = triton_direct(u["grpc"], c)
                print(f"{name} triton direct c={c}: {out[name]['direct'][c]}", flush=True)
        for u in up.values():
            locust(u["url"], 4, u["workdir"])  # warm-up
        for users in USERS:
            for name, u in up.items():
                p = locust(u["url"], users, u["workdir"])
                print(f"{name} users={users}: {p}", flush=True)
                out[name]["points"].append(p)
        return out


def best_under(points: list[dict[str, float]], p95_ms: float) -> float:
    ok = [p["rps"] for p in points if p["p95_ms"] <= p95_ms and not p["failures"]]
    return max(ok, default=0.0)


def main() -> dict[str, Any]:
    modes = run_modes()
    ratios = {
        name: {
            str(b): best_under(modes[name]["points"], b) / max(1e-9, best_under(modes["off"]["points"], b))
            for b in P95_BOUNDS_MS
        }
        for name in MODES
    }
    off16 = modes["off"]["direct"][16]["rps"]
    direct_ratio = {name: modes[name]["direct"][16]["rps"] / max(1e-9, off16) for name in MODES}
    result = {
        "model": MODEL, "users": USERS, "duration_s": DURATION_S, "blas_threads": BLAS_1,
        "modes": {k: {**v, "direct": {str(c): r for c, r in v["direct"].items()}} for k, v in modes.items()},
        "p95_bounds_ms": P95_BOUNDS_MS, "p95_bound_ms": P95_BOUND_MS,
        "throughput_at_bound": {
            n: {str(b): best_under(modes[n]["points"], b) for b in P95_BOUNDS_MS} for n in MODES
        },
        "ratio": ratios, "direct_ratio": direct_ratio,
    }  # fmt: skip
    for name in MODES:
        print(f"{name}/off throughput at equal p95: {ratios[name]} (target >= 3x); direct 16 clients: "
              f"{direct_ratio[name]:.2f}x")  # fmt: skip
    save("batching", result)
    return result


if __name__ == "__main__":
    main()
