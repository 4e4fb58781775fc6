"""The three case studies, untuned against tuned, on this machine's real data plane.

    .venv/bin/python -m bench.casestudies.run            # all three (9 min on 2 cores, 2026-11-28)
    .venv/bin/python -m bench.casestudies.run --quick    # shorter (~6 min): results/casestudies-quick.json
    .venv/bin/python -m bench.casestudies.run --case recommendation --no-caches

For each example (workloads/examples/{recommendation,voice-assistant,perception}.yaml) and each variant
(``variants.untuned`` / ``variants.tuned``, the same replica budget), a fresh data plane (``plane.running``):

1. untuned: a short warm-up, then the capacity ramp (``traffic.ramp``: the highest Poisson rate it
   sustains, its median within the example's SLO, and the highest within the SLO); that capacity C is the
   comparison load;
2. untuned, after it drained: the comparison point, Poisson at C for ``compare_s`` (arrival seed 7);
3. tuned, on a fresh plane: a warm-up at C/2 (another seed), the comparison point at C with the same arrivals
   and the same request bodies as in 2, then its own ramp (its throughput at the SLO).

Writes results/casestudies.json; ``python -m bench.casestudies.report`` turns it into docs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from . import plane as dp
from . import traffic, variants

RESULTS = Path(__file__).resolve().parent / "results"
TRAFFIC = {
    "recommendation": lambda: traffic.zipf_traffic(),
    # the first audio sample (in the faint noise before speech) gets at most 0.085: no click the VAD hears
    "voice-assistant": lambda: traffic.unique_traffic("voice-assistant", ("audio", 0), 0.0, 1e-7),
    "perception": lambda: traffic.unique_traffic("driving-perception", ("image", 0, 0, 0)),
}
# Caches where docs/tuning.md section 9 says they pay, for this traffic (variants.tuned's arguments):
# - recommendation: popular queries repeat, so every step's result cache (a hit skips encode, retrieve, rank);
# - voice assistant: every utterance is new, so no step cache; but the reply the synthesizer speaks comes from
#   a handful of intents, so the tts model gets Triton's response cache and its step sends one reply per
#   request (a micro-batch of replies would rarely repeat as a whole);
# - perception: every camera frame is new: no cache.
START_RPS = {"recommendation": 8.0, "voice-assistant": 1.0, "perception": 2.0}  # the ramp's first rate
TUNED: dict[str, dict[str, tuple[str, ...]]] = {
    "recommendation": {"cache_steps": ("*",)},
    "voice-assistant": {"cache_models": ("tts",), "single_sample": ("synthesize",)},
    "perception": {},
}
ARTICLE = {  # what the seed article reports tuning bought, per case study
    "recommendation": {"p95_change": -0.50, "what": "response time -50%"},
    "voice-assistant": {"p95_change": -0.60, "what": "response time -60%"},
    "perception": {
        "p95_change": -0.40,
        "what": "response time -40%; +50% throughput (high-resolution images)",
    },
}


def machine() -> dict[str, Any]:
    """The machine, its load now, and the code measured (its commit; ``BENCH_COMMIT`` for an export)."""
    import subprocess

    from bench.dataplane.stack import machine as describe

    commit = os.environ.get("BENCH_COMMIT", "")
    if not commit:
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=variants.ROOT, capture_output=True, text=True)
        commit = git.stdout.strip() if git.returncode == 0 else "unknown"
    return {
        "machine": describe(),
        "nproc": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "commit": commit,
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


async def compare_point(plane: dp.Plane, t: traffic.Traffic, rate: float, seconds: float) -> dict[str, Any]:
    """Both variants' comparison: the same arrivals (seed 7) and bodies, at least about 40 runs."""
    await plane.drain()
    before = plane.metrics()
    span = traffic.duration(rate, seconds, 40, 60)
    p = await traffic.measure(plane.gateway_url, t, rate, span, seed=7, offset=traffic.block("compare"))
    p["metrics"] = traffic.delta(before, plane.metrics())
    p["load1"] = os.getloadavg()[0]
    return p


async def warm_up(plane: dp.Plane, t: traffic.Traffic, rate: float, seconds: float) -> None:
    await traffic.measure(
        plane.gateway_url, t, max(1.0, rate), seconds, seed=99, offset=traffic.block("warm-up")
    )


def case(name: str, quick: bool, caches: bool) -> dict[str, Any]:
    manifest = variants.example(name)
    spec = manifest["spec"]
    t = TRAFFIC[name]()
    slo = float(spec["slo"]["p95LatencyMs"])
    point_s, compare_s, warm_s, points = (3.0, 8.0, 2.0, 6) if quick else (6.0, 20.0, 4.0, 8)
    min_runs, max_s = (10, 15.0) if quick else (20, 30.0)
    specs = {
        "untuned": variants.untuned(spec),
        "tuned": variants.tuned(spec, **(TUNED[name] if caches else {})),
    }
    out: dict[str, Any] = {
        "workflow": manifest["metadata"]["name"],
        "example": f"workloads/examples/{variants.CASES[name]}",
        "slo_p95_ms": slo,
        "traffic": t.describe,
        "settings": {k: variants.describe(v) for k, v in specs.items()},
        "article": ARTICLE[name],
        "point_s": point_s,
        "compare_s": compare_s,
    }
    started = time.monotonic()
    with dp.running(variants.workflow(manifest, specs["untuned"])) as plane:
        asyncio.run(warm_up(plane, t, 2, warm_s))
        ramp = asyncio.run(
            traffic.ramp(
                plane,
                t,
                slo,
                point_s,
                START_RPS[name],
                points,
                observe=plane.metrics,
                min_runs=min_runs,
                max_seconds=max_s,
            )
        )
        capacity = ramp["capacity_rps"]
        if not capacity:
            raise RuntimeError(f"{name}: untuned sustained no rate: {ramp['points']}")
        out["untuned"] = {"ramp": ramp, "compare": asyncio.run(compare_point(plane, t, capacity, compare_s))}
    with dp.running(variants.workflow(manifest, specs["tuned"])) as plane:
        asyncio.run(warm_up(plane, t, capacity / 2, warm_s))
        cmp = asyncio.run(compare_point(plane, t, capacity, compare_s))
        ramp = asyncio.run(
            traffic.ramp(
                plane,
                t,
                slo,
                point_s,
                capacity,
                points,
                observe=plane.metrics,
                min_runs=min_runs,
                max_seconds=max_s,
            )
        )
        out["tuned"] = {"ramp": ramp, "compare": cmp}
    out["compare_rps"] = capacity
    u, v = out["untuned"]["compare"], out["tuned"]["compare"]
    out["ratios"] = {
        "p50": v["p50_ms"] / u["p50_ms"],
        "p95": v["p95_ms"] / u["p95_ms"],
        "capacity": out["tuned"]["ramp"]["capacity_rps"] / capacity,
    }
    base = out["untuned"]["ramp"]["at_slo_rps"]
    if base:  # neither is defined when the untuned system meets the SLO at no rate
        out["ratios"]["throughput_at_slo"] = out["tuned"]["ramp"]["at_slo_rps"] / base
    out["seconds"] = time.monotonic() - started
    print(f"{name}: {json.dumps(out['ratios'])} at {capacity:.1f} req/s", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.casestudies.run")
    parser.add_argument(
        "--quick", action="store_true", help="shorter points (results/casestudies-quick.json)"
    )
    parser.add_argument(
        "--case", action="append", choices=sorted(variants.CASES), help="only these (repeatable)"
    )
    parser.add_argument(
        "--no-caches", action="store_true", help="tuned without the response and result caches"
    )
    args = parser.parse_args(argv)
    caches = variants.has_caching() and not args.no_caches
    data: dict[str, Any] = {
        **machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "quick": args.quick,
        "caches": caches,
        "threads": dp.pin_threads(),
        "cases": {},
    }
    name = "casestudies-quick" if args.quick else "casestudies"
    for c in args.case or list(variants.CASES):
        data["cases"][c] = case(c, args.quick, caches)
        data["load_at_end"] = os.getloadavg()
        save(name, data)  # after every case: a later failure keeps what was measured
    print(f"wrote {RESULTS / name}.json")
    return data


if __name__ == "__main__":
    main()
