"""Load balancing across replicas of unequal speed, OPEN loop: Poisson arrivals at the same offered rate for
every policy (round-robin, least-outstanding, power-of-two, least-latency), so no policy runs at a higher load
than another. The component under test is the step runtime's ``ModelClient`` (its balancer), sending single
samples (client micro-batching off).

Two setups:
- ``sim``: two simulated model servers (``python -m agentscale_harness.sim``, separate processes), one at
  ``--speed 3`` (3x slower). NOT the measured profile: both get :data:`SIM_PROFILE`, typed in here (5 ms +
  0.8 ms per sample; the measured encoder-large line in results/profile.json is 6.43 ms + 0.27 ms), and the
  published results (results/balancing.json, ``sim_profile``) were measured with it. They sleep instead of
  computing, so the two replicas do not fight over this machine's 2 cores: this stands for replicas on
  separate nodes, one on slower hardware.
- ``triton``: two real tritonservers serving ``encoder-large`` (no dynamic batching, one instance, BLAS
  pinned to 1 thread); the slow one runs each forward pass 3 times (AGENTSCALE_MODEL_REPEAT=3: real
  compute). All share the 2 cores with the client, so the slow replica also slows the fast one a little.

``peak-ewma`` is least-latency's cost with Finagle's peak-EWMA estimate (raw latency, peak).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from agentscale_harness.local import TritonServer, free_port
from agentscale_worker.triton import ModelClient

from .openloop import open_loop
from .stack import ROOT, save, triton_config, wait_port

STRATEGIES = ("round-robin", "least-outstanding", "power-of-two", "peak-ewma", "least-latency")
DURATION_S = 10
SLOW = 3  # the slow replica is 3x slower
# simulated service time of the fast replica, typed in (not results/profile.json): 5 ms + 0.8 ms per sample,
# a rough one-core shape of encoder-large; every published balancing result used these numbers
SIM_PROFILE = {"base_ms": 5.0, "per_sample_ms": 0.8, "max_batch": 64}
SIM_RATES = [60.0, 120.0, 180.0]  # fast replica alone: ~170/s unbatched; slow: ~57/s
TRITON_RATES = [40.0, 80.0]
BLAS_1 = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


async def measure(endpoints: list[str], strategy: str, rate: float, seed: int) -> dict[str, Any]:
    client = ModelClient("encoder-large", ",".join(endpoints), strategy=strategy, timeout_s=30)
    await client.start()
    x = {"QUERY_TOKENS": np.arange(16, dtype=np.int32)[None]}
    sent: dict[str, int] = {}
    orig = client.balancer.acquire

    def counting() -> str:
        e = orig()
        sent[e] = sent.get(e, 0) + 1
        return e

    client.balancer.acquire = counting  # type: ignore[method-assign]
    for _ in range(20):  # warm-up; also gives least-latency its first observations
        await client.infer_batch(x)
    sent.clear()
    r: dict[str, Any] = await open_loop(lambda i: client.infer_batch(x), rate, DURATION_S, seed=seed)
    await client.close()
    r["slow_share"] = sent.get(endpoints[1], 0) / max(1, sum(sent.values()))
    return r


def compare(endpoints: list[str], rates: list[float], label: str) -> list[dict[str, Any]]:
    out = []
    for rate in rates:
        row: dict[str, Any] = {"offered_rps": rate}
        for strategy in STRATEGIES:  # same seed: the same arrival times for every policy
            r = asyncio.run(measure(endpoints, strategy, rate, seed=int(rate)))
            print(f"{label} rate={rate:.0f}/s {strategy}: {r}", flush=True)
            row[strategy] = r
        rr = row["round-robin"]["p95_ms"]
        row["p95_vs_rr"] = {s: row[s]["p95_ms"] / rr for s in STRATEGIES}
        out.append(row)
    return out


def run_sim(work: Path) -> list[dict[str, Any]]:
    profile = work / "profile.json"
    profile.write_text(json.dumps({"models": {"encoder-large": SIM_PROFILE}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workloads")}
    procs, eps = [], []
    for speed in (1, SLOW):
        port = free_port()
        cmd = [sys.executable, "-m", "agentscale_harness.sim", "--model", "encoder-large"]
        cmd += ["--port", str(port), "--speed", str(speed), "--profile", str(profile)]
        log = open(work / f"sim-{speed}.log", "ab")  # noqa: SIM115 - handed to the child
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log))
        eps.append(f"127.0.0.1:{port}")
    try:
        for p, e in zip(procs, eps, strict=True):
            wait_port(int(e.rsplit(":", 1)[1]), p)
        return compare(eps, SIM_RATES, "sim")
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)


def run_triton(work: Path) -> list[dict[str, Any]]:
    os.environ.update(BLAS_1)
    cfg = {"encoder-large": triton_config("encoder-large", batching=False)}
    fast = TritonServer(work / "fast", models=["encoder-large"], config_overrides=cfg).start()
    slow = TritonServer(work / "slow", models=["encoder-large"], config_overrides=cfg, repeat=SLOW).start()
    try:
        return compare([fast.grpc_url, slow.grpc_url], TRITON_RATES, "triton")
    finally:
        fast.stop()
        slow.stop()


def main() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="agentscale-lb-"))
    out: dict[str, Any] = {
        "strategies": list(STRATEGIES),
        "slow_factor": SLOW,
        "duration_s": DURATION_S,
        "sim_profile": SIM_PROFILE,
        "blas_threads": BLAS_1,
        "sim": run_sim(work),
        "triton": run_triton(work),
    }
    for setup in ("sim", "triton"):
        for row in out[setup]:
            red = {s: f"{1 - v:.0%}" for s, v in row["p95_vs_rr"].items() if s != "round-robin"}
            rate = row["offered_rps"]
            print(f"{setup} at {rate:.0f}/s: p95 lower than round robin by {red} (target >= 30%)")
    save("balancing", out)
    return out


if __name__ == "__main__":
    main()
