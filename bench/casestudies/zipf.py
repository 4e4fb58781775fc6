"""Caching under a Zipf query mix: the recommendation workflow with caching off, Triton's response cache on,
and the step result cache on.

    .venv/bin/python -m bench.casestudies.zipf            # 4 min on 2 cores (2026-11-28), results/zipf.json
    .venv/bin/python -m bench.casestudies.zipf --quick    # results/zipf-quick.json

Traffic: ``traffic.zipf_traffic`` (s = 1.1 over 10,000 distinct queries). Every variant starts from
``variants.tuned`` (dynamic batching, least-latency, concurrency) with the worker's micro-batching off, so
each Triton request carries one query: Triton's response cache keys on the whole request, and a micro-batch
of 16 queries almost never repeats as a whole. Then:

- ``off``: no cache;
- ``model-cache``: ``responseCache`` on both model servers (Triton answers a repeated request from memory);
- ``step-cache``: ``resultCache`` on every step (a repeated query skips encode, retrieve and rank).

For each, on a fresh data plane: a warm-up (another arrival seed), then the capacity ramp (``traffic.ramp``):
throughput at the example's p95 SLO (the highest rate of the ramp within it); per point, the model
computations per answered run (Triton's requests minus its cache hits, both model servers, from their
``/metrics``), Triton executions per run, and the caches' hits and misses."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from . import plane as dp
from . import traffic, variants
from .run import machine, save

VARIANTS = ("off", "model-cache", "step-cache")
WARM_UP_RPS, WARM_UP_S = 10.0, 30.0  # about 300 runs before the ramp (full run)


def spec_for(variant: str, spec: dict[str, Any]) -> dict[str, Any]:
    return variants.tuned(
        spec,
        cache_steps=("*",) if variant == "step-cache" else (),
        cache_models=("*",) if variant == "model-cache" else (),
        single_sample=("*",),
    )


def per_run(point: dict[str, Any]) -> dict[str, float]:
    """Model work per answered run at one ramp point, from the counters' increases."""
    runs = max(1, point["sent"] - point["errors"])
    m = point.get("metrics", {})
    tri = [v for k, v in m.items() if k.startswith("triton/")]
    steps = [v for k, v in m.items() if k.startswith("step/")]
    requests = sum(t.get("nv_inference_request_success", 0.0) for t in tri)
    hits = sum(t.get("nv_cache_num_hits_per_model", 0.0) for t in tri)
    misses = sum(t.get("nv_cache_num_misses_per_model", 0.0) for t in tri)
    execs = sum(t.get("nv_inference_exec_count", 0.0) for t in tri)
    step_hits = sum(v for s in steps for k, v in s.items() if "cache" in k and "hit" in k)
    step_misses = sum(v for s in steps for k, v in s.items() if "cache" in k and "miss" in k)
    return {
        "runs": runs,
        "model_requests_per_run": requests / runs,
        "model_computations_per_run": (requests - hits) / runs,
        "model_executions_per_run": execs / runs,
        "model_cache_hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
        "step_cache_hit_ratio": step_hits / (step_hits + step_misses) if step_hits + step_misses else 0.0,
    }


def variant(name: str, quick: bool) -> dict[str, Any]:
    manifest = variants.example("recommendation")
    spec = spec_for(name, manifest["spec"])
    slo = float(manifest["spec"]["slo"]["p95LatencyMs"])
    t = traffic.zipf_traffic()
    point_s, warm_s, points = (3.0, 3.0, 6) if quick else (6.0, WARM_UP_S, 9)
    started = time.monotonic()
    with dp.running(variants.workflow(manifest, spec)) as plane:
        warm = traffic.measure(
            plane.gateway_url, t, WARM_UP_RPS, warm_s, seed=99, offset=traffic.block("warm-up")
        )
        asyncio.run(warm)
        ramp = asyncio.run(traffic.ramp(plane, t, slo, point_s, 10.0, points, observe=plane.metrics))
    for p in ramp["points"]:
        p["per_run"] = per_run(p)
    passing = [p for p in ramp["points"] if p["meets_slo"]]
    best = max(passing, key=lambda p: p["offered_rps"]) if passing else None
    return {
        "settings": variants.describe(spec),
        "slo_p95_ms": slo,
        "ramp": ramp,
        "throughput_at_slo": ramp["at_slo_rps"],
        "at_capacity": best["per_run"] if best else None,
        "seconds": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.casestudies.zipf")
    parser.add_argument("--quick", action="store_true", help="shorter points (results/zipf-quick.json)")
    args = parser.parse_args(argv)
    if not variants.has_caching():
        raise SystemExit("the AgentWorkflow API has no responseCache/resultCache: nothing to compare")
    data: dict[str, Any] = {
        **machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "quick": args.quick,
        "traffic": traffic.zipf_traffic().describe,
        "threads": dp.pin_threads(),
        "warm_up": "about 30 runs"
        if args.quick
        else f"{WARM_UP_RPS * WARM_UP_S:.0f} runs at {WARM_UP_RPS:.0f}/s",
        "variants": {},
    }
    name = "zipf-quick" if args.quick else "zipf"
    for v in VARIANTS:
        data["variants"][v] = variant(v, args.quick)
        data["load_at_end"] = os.getloadavg()
        save(name, data)
        r = data["variants"][v]
        print(f"{v}: {r['throughput_at_slo']:.1f} req/s at the SLO; {r['at_capacity']}", flush=True)
    return data


if __name__ == "__main__":
    main()
