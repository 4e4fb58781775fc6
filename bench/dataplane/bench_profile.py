"""Measure latency versus batch size of every example model on the real tritonserver (CPU), fit
``service_ms = base_ms + per_sample_ms * batch`` per model, and write results/profile.json: the profile the
SIMULATED model server (workloads/agentscale_harness/sim.py) follows."""

# ruff: noqa: E501 - long prose strings and result tables

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from agentscale_harness.local import TritonServer
from agentscale_worker.examples.nets import SPECS
from agentscale_worker.triton import ModelClient

from .stack import percentile, save, triton_config

BATCHES = [1, 2, 4, 8, 16, 32, 64]
REPS = 25


async def profile_model(url: str, model: str) -> dict[str, Any]:
    client = ModelClient(model, url)
    await client.start()
    spec = SPECS[model]
    points = []
    for b in BATCHES:
        x = {
            t.name: (np.random.default_rng(0).random((b, *t.dims)) * 10).astype(t.dtype) for t in spec.inputs
        }
        await client.infer_batch(x)
        lat = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            await client.infer_batch(x)
            lat.append((time.perf_counter() - t0) * 1000)
        points.append({"batch": b, "p50_ms": percentile(lat, 50)})
    await client.close()
    slope, base = np.polyfit([p["batch"] for p in points], [p["p50_ms"] for p in points], 1)
    return {
        "base_ms": round(float(base), 4),
        "per_sample_ms": round(float(max(slope, 0.0)), 5),
        "max_batch": 64,
        "points": points,
    }


def main() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="agentscale-profile-"))
    cfg = {m: triton_config(m, batching=False) for m in SPECS}
    server = TritonServer(work, config_overrides=cfg).start()
    try:
        models = {m: asyncio.run(profile_model(server.grpc_url, m)) for m in SPECS}
    finally:
        server.stop()
    for m, p in models.items():
        print(f"{m}: base {p['base_ms']} ms + {p['per_sample_ms']} ms/sample")
    out = {
        "source": "bench/dataplane/bench_profile.py: sequential gRPC requests of each batch size, one client, "
        "real tritonserver 2.51 (nvidia-pytriton wheel) on CPU, Python backend, median of 25",
        "models": models,
        "default": models["query-encoder"],
    }
    save("profile", out)
    return out


if __name__ == "__main__":
    main()
