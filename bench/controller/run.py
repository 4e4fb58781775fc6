"""Every policy on every trace, same arrivals and service times: ``results/controller.json``.

    .venv/bin/python -m bench.controller.run                    # the five generated traces, then docs + plots
    .venv/bin/python -m bench.controller.run --trace FILE.csv   # replay one CSV (a column of arrival seconds)
    .venv/bin/python -m bench.controller.run --traces flash-crowd --startup 60 --no-report

Prints one line per policy and trace. ``--trace`` writes ``results/trace-<name>.json`` and leaves the docs
alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from agentscale.api.models import ScalingMode
from agentscale.resource_controller import PolicyConfig
from numpy.typing import NDArray

from bench.controller import oracle, policies, service, traces
from bench.controller.sim import PlannedFleet, Policy, PolicyFleet, Run, Scenario, simulate

RESULTS = Path(__file__).resolve().parent / "results"
PLOTTED = "flash-crowd"
KEDA, ORACLE = "keda-queue", "oracle"
TARGET_ATTAINMENT, TARGET_VS_KEDA, TARGET_VS_ORACLE = 0.99, 0.8, 1.3


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} vCPU ({cpu}), Python {platform.python_version()}, {system}"


def policy_makers(scenario: Scenario) -> dict[str, Callable[[], Policy]]:
    return {
        "controller-queue": lambda: policies.Controller(ScalingMode.queue, scenario),
        "controller-slo": lambda: policies.Controller(ScalingMode.slo, scenario),
        "hpa-cpu": lambda: policies.Hpa(scenario),
        KEDA: lambda: policies.Keda(scenario),
    }


KEDA_TARGETS = (1, 2, 5, 10)


def calibrate_keda(
    model: service.ServiceModel, scenario: Scenario, seed: int
) -> tuple[int, list[dict[str, Any]]]:
    """The KEDA-style scaler's target (messages per replica), tuned on the steady trace: the fewest
    replica-seconds among the targets that reach the attainment target there (else the best attainment)."""
    trace = traces.generate("steady", seed)
    svc = model.draw(trace.requests, seed)
    rows = []
    for target in KEDA_TARGETS:
        sc = dataclasses.replace(scenario, keda_target=target)
        fleet = PolicyFleet(policies.Keda(sc), initial_replicas(trace, model, sc), sc)
        s = summarize(simulate(trace.arrivals, svc, trace.duration_s, fleet, sc), sc)
        rows.append(
            {"target": target, "attainment": s["attainment"], "replica_seconds": s["replica_seconds"]}
        )
    meeting = [r for r in rows if r["attainment"] >= TARGET_ATTAINMENT]
    best = (
        min(meeting, key=lambda r: r["replica_seconds"])
        if meeting
        else max(rows, key=lambda r: r["attainment"])
    )
    return int(best["target"]), rows


def initial_replicas(trace: traces.Trace, model: service.ServiceModel, scenario: Scenario) -> int:
    """Every policy starts with the replicas the first minute's rate needs at 70% busy, ready at 0."""
    rate = float((trace.arrivals < 60).sum()) / min(60, trace.duration_s)
    n = math.ceil(rate * model.mean_s / 0.7)
    return min(max(n, scenario.min_replicas), scenario.max_replicas)


def p95_series(
    latency: NDArray[Any], arrivals: NDArray[Any], duration_s: int, step_s: int = 10
) -> list[float | None]:
    """p95 latency (ms) of the messages arriving in each ``step_s`` window; inf -> None (never finished)."""
    out: list[float | None] = []
    idx = np.searchsorted(arrivals, np.arange(0, duration_s + step_s, step_s, dtype=np.float64))
    for a, b in itertools.pairwise(idx):
        if b <= a:
            out.append(None)
            continue
        v = float(np.quantile(latency[a:b], 0.95))
        out.append(round(v * 1000, 2) if math.isfinite(v) else None)
    return out


def summarize(run: Run, scenario: Scenario) -> dict[str, Any]:
    finite = run.latency[np.isfinite(run.latency)]
    misses = int((run.latency > scenario.slo_s).sum())
    return {
        "requests": len(run.latency),
        "misses": misses,
        "attainment": round(run.attainment(scenario.slo_s), 5),
        "p95_ms": round(float(np.quantile(run.latency, 0.95)) * 1000, 2)
        if len(finite) == len(run.latency)
        else None,
        "p99_ms": round(float(np.quantile(run.latency, 0.99)) * 1000, 2)
        if len(finite) == len(run.latency)
        else None,
        "unfinished": int(len(run.latency) - len(finite)),
        "replica_seconds": int(run.billed.sum()),
        "mean_replicas": round(float(run.billed.mean()), 2),
        "peak_replicas": int(run.billed.max()),
        "scale_events": run.scale_events,
        "startup_s": scenario.startup_s,
    }


def run_trace(
    trace: traces.Trace, model: service.ServiceModel, scenario: Scenario, seed: int, series: bool
) -> dict[str, Any]:
    svc = model.draw(trace.requests, seed)
    start = initial_replicas(trace, model, scenario)
    out: dict[str, Any] = {
        "description": trace.description,
        "duration_s": trace.duration_s,
        "requests": trace.requests,
        "mean_rps": round(trace.requests / trace.duration_s, 1),
        "initial_replicas": start,
        "policies": {},
    }
    runs: dict[str, Run] = {}
    for name, make in policy_makers(scenario).items():
        t0 = time.process_time()
        policy = make()
        fleet = PolicyFleet(policy, start, scenario)
        runs[name] = simulate(trace.arrivals, svc, trace.duration_s, fleet, scenario)
        row = summarize(runs[name], scenario)
        if isinstance(policy, policies.Controller):
            row["rules"] = dict(policy.rules.most_common())
            row["changes_first"] = [
                {"t": t, "from": a, "to": b, "reason": r} for t, a, b, r in policy.changes[:12]
            ]
        row["cpu_s"] = round(time.process_time() - t0, 1)
        out["policies"][name] = row
    t0 = time.process_time()
    need = oracle.need(trace.arrivals, svc, trace.duration_s, scenario)
    paid = oracle.billed(need, scenario.startup_s)
    runs[ORACLE] = simulate(trace.arrivals, svc, trace.duration_s, PlannedFleet(need, paid), scenario)
    out["policies"][ORACLE] = summarize(runs[ORACLE], scenario) | {
        "cpu_s": round(time.process_time() - t0, 1)
    }
    keda_rs = out["policies"][KEDA]["replica_seconds"]
    oracle_rs = out["policies"][ORACLE]["replica_seconds"]
    for row in out["policies"].values():
        row["vs_keda"] = round(row["replica_seconds"] / keda_rs, 3)
        row["vs_oracle"] = round(row["replica_seconds"] / oracle_rs, 3)
        row["meets"] = {
            "attainment": row["attainment"] >= TARGET_ATTAINMENT,
            "vs_keda": row["vs_keda"] <= TARGET_VS_KEDA,
            "vs_oracle": row["vs_oracle"] <= TARGET_VS_ORACLE,
        }
    if series:
        out["series"] = {
            "arrivals_per_s": trace.rate_per_second().tolist(),
            "p95_window_s": 10,
            "policies": {
                name: {
                    "billed": r.billed.tolist(),
                    "ready": r.ready.tolist(),
                    "p95_ms": p95_series(r.latency, trace.arrivals, trace.duration_s),
                }
                for name, r in runs.items()
            },
        }
    return out


def dumps(value: Any, indent: int = 0) -> str:
    """JSON with one key per line, but each list of numbers on one line (the per-second series)."""
    pad = " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        items = [f"{pad}{dumps(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value)


def line(trace: str, name: str, row: dict[str, Any]) -> str:
    return (
        f"{trace:12s} {name:17s} attain {row['attainment'] * 100:7.3f}%"
        f"  replica-s {row['replica_seconds']:8d}"
        f"  vs KEDA {row['vs_keda']:5.2f}  vs oracle {row['vs_oracle']:5.2f}  events {row['scale_events']:4d}"
        f"  p95 {row['p95_ms']} ms  ({row['cpu_s']} s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.controller.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", type=Path, help="CSV of arrival timestamps (one column, seconds) to replay")
    ap.add_argument("--traces", default=",".join(traces.SHAPES), help="generated traces to run (comma list)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--startup", type=float, default=Scenario.startup_s, help="pod start-up delay, s (ASSUMED)"
    )
    ap.add_argument("--slo-ms", type=float, default=Scenario.slo_s * 1000)
    ap.add_argument("--out", type=Path, help="result file (default results/controller.json)")
    ap.add_argument(
        "--no-report", action="store_true", help="do not rewrite docs/benchmarks.md and the plots"
    )
    args = ap.parse_args(argv)
    if args.trace is not None:
        try:
            chosen = [traces.load_csv(args.trace)]
        except (OSError, ValueError) as e:
            print(f"--trace: {e}", file=sys.stderr)
            return 2
        out_path = args.out or RESULTS / f"trace-{chosen[0].name}.json"
    else:
        try:
            chosen = [traces.generate(n.strip(), args.seed) for n in args.traces.split(",") if n.strip()]
        except ValueError as e:
            print(f"--traces: {e}", file=sys.stderr)
            return 2
        out_path = args.out or RESULTS / "controller.json"
    model = service.measured()
    try:
        scenario = Scenario(slo_s=args.slo_ms / 1000, startup_s=args.startup)
    except ValueError as e:
        print(f"--slo-ms / --startup: {e}", file=sys.stderr)
        return 2
    keda_target, calibration = calibrate_keda(model, scenario, args.seed)
    scenario = dataclasses.replace(scenario, keda_target=keda_target)
    print(f"KEDA-style scaler: target {keda_target} message(s) per replica (steady trace: {calibration})")
    result: dict[str, Any] = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "python -m bench.controller.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scenario": {
            "slo_p95_ms": round(scenario.slo_s * 1000, 3),
            "startup_s": scenario.startup_s,
            "startup_measured": False,
            "bounds": [scenario.min_replicas, scenario.max_replicas],
            "target_lag_per_replica": scenario.target_lag_per_replica,
            "keda_target": scenario.keda_target,
            "keda_calibration": calibration,
            "target_cpu": scenario.target_cpu,
            "scrape_s": scenario.scrape_s,
            "windows_s": [scenario.windows.stable_s, scenario.windows.short_s],
            "controller_cycle_s": policies.Controller(ScalingMode.queue, scenario).period_s,
            "policy_config": PolicyConfig().__dict__,
            "drain_s": scenario.drain_s,
            "seed": args.seed,
        },
        "service": model.describe(),
        "targets": {
            "attainment": TARGET_ATTAINMENT,
            "vs_keda": TARGET_VS_KEDA,
            "vs_oracle": TARGET_VS_ORACLE,
        },
        "traces": {},
    }
    for trace in chosen:
        row = run_trace(
            trace, model, scenario, args.seed, series=trace.name == PLOTTED or args.trace is not None
        )
        result["traces"][trace.name] = row
        for name, p in row["policies"].items():
            print(line(trace.name, name, p), flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(dumps(result) + "\n")
    print(f"wrote {out_path}")
    if args.trace is None and not args.no_report and args.out is None and PLOTTED in result["traces"]:
        from bench.controller import report

        report.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
