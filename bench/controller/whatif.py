"""Which knob costs what: the controller (both modes) on the hard traces, one change at a time.

    .venv/bin/python -m bench.controller.whatif      # -> results/whatif.json (then run.py's report shows it)

Variants are settings an operator can change today: the pods' start-up (the scenario's, which the operator
is told through ``AGENTSCALE_RC_POD_STARTUP_SECONDS``), the loop's cycle, the step's
``scaleDownStabilizationSeconds``, and ``PolicyConfig`` knobs (some set back to the rule before the benchmark
tuned it). Every variant sees the same arrivals and service times as ``run``; ratios are against the
KEDA-style scaler and the oracle at the same start-up delay.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

from agentscale.api.models import ScalingMode
from agentscale.resource_controller import PolicyConfig

from bench.controller import oracle, policies, service, traces
from bench.controller.run import RESULTS, calibrate_keda, dumps, initial_replicas, machine, summarize
from bench.controller.sim import PlannedFleet, PolicyFleet, Scenario, simulate

TRACES = ("diurnal", "step", "flash-crowd", "bursty")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    startup_s: float | None = None
    cycle_s: int | None = None
    stabilization_s: int | None = None
    config: tuple[tuple[str, float], ...] = ()
    """``PolicyConfig`` fields changed from their defaults."""


VARIANTS = (
    Variant("as shipped"),
    Variant("start-up 5 s instead of the assumed 30 s", startup_s=5.0),
    Variant("cycle 5 s (AGENTSCALE_RC_CYCLE_SECONDS)", cycle_s=5),
    Variant("start-up 5 s + cycle 5 s", startup_s=5.0, cycle_s=5),
    Variant("scaleDownStabilizationSeconds 30", stabilization_s=30),
    Variant("target_utilization 0.7 (the default before)", config=(("target_utilization", 0.7),)),
    Variant(
        "drain_startup_share 0 (drain within the budget, as before)", config=(("drain_startup_share", 0.0),)
    ),
    Variant("drain_startup_share 0.1", config=(("drain_startup_share", 0.1),)),
    Variant(
        "drain_stabilization_s 120 (a drain's peak held the whole window)",
        config=(("drain_stabilization_s", 120.0),),
    ),
)


def run_variant(
    v: Variant,
    base: Scenario,
    trace: traces.Trace,
    svc: Any,
    refs: dict[str, int],
    model: service.ServiceModel,
) -> dict[str, Any]:
    sc = base
    if v.startup_s is not None:
        sc = dataclasses.replace(sc, startup_s=v.startup_s)
    if v.stabilization_s is not None:
        sc = dataclasses.replace(sc, scale_down_stabilization_s=v.stabilization_s)
    out: dict[str, Any] = {}
    for mode in (ScalingMode.queue, ScalingMode.slo):
        ctl = policies.Controller(mode, sc, config=PolicyConfig(**dict(v.config)))
        if v.cycle_s is not None:
            ctl.period_s = v.cycle_s
        fleet = PolicyFleet(ctl, initial_replicas(trace, model, sc), sc)
        run = simulate(trace.arrivals, svc, trace.duration_s, fleet, sc)
        s = summarize(run, sc)
        out[f"controller-{mode.value}"] = {
            "attainment": s["attainment"],
            "replica_seconds": s["replica_seconds"],
            "vs_keda": round(s["replica_seconds"] / refs["keda"], 3),
            "vs_oracle": round(s["replica_seconds"] / refs["oracle"], 3),
            "scale_events": s["scale_events"],
        }
    return out


def references(sc: Scenario, trace: traces.Trace, svc: Any, model: service.ServiceModel) -> dict[str, int]:
    """Replica-seconds of the KEDA-style scaler and the oracle at this scenario's start-up."""
    keda = simulate(
        trace.arrivals,
        svc,
        trace.duration_s,
        PolicyFleet(policies.Keda(sc), initial_replicas(trace, model, sc), sc),
        sc,
    )
    need = oracle.need(trace.arrivals, svc, trace.duration_s, sc)
    best = simulate(
        trace.arrivals, svc, trace.duration_s, PlannedFleet(need, oracle.billed(need, sc.startup_s)), sc
    )
    return {"keda": int(keda.billed.sum()), "oracle": int(best.billed.sum())}


def main(argv: Sequence[str] | None = None) -> int:
    seed = 1
    model = service.measured()
    scenario = Scenario()
    keda_target, _ = calibrate_keda(model, scenario, seed)
    scenario = dataclasses.replace(scenario, keda_target=keda_target)
    result: dict[str, Any] = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "python -m bench.controller.whatif",
        "seed": seed,
        "keda_target": keda_target,
        "variants": {},
    }
    cached: dict[tuple[str, float], dict[str, int]] = {}
    loaded: dict[str, tuple[traces.Trace, Any]] = {}
    for name in TRACES:
        trace = traces.generate(name, seed)
        loaded[name] = (trace, model.draw(trace.requests, seed))
    for v in VARIANTS:
        rows: dict[str, Any] = {}
        for name, (trace, svc) in loaded.items():
            startup = scenario.startup_s if v.startup_s is None else v.startup_s
            key = (name, startup)
            if key not in cached:
                cached[key] = references(dataclasses.replace(scenario, startup_s=startup), trace, svc, model)
            rows[name] = run_variant(v, scenario, trace, svc, cached[key], model)
            for mode, r in rows[name].items():
                print(
                    f"{v.name[:48]:48s} {name:12s} {mode:17s} attain {r['attainment'] * 100:7.3f}%"
                    f"  vs KEDA {r['vs_keda']:5.2f}  vs oracle {r['vs_oracle']:5.2f}",
                    flush=True,
                )
        result["variants"][v.name] = rows
    path = RESULTS / "whatif.json"
    path.write_text(dumps(result) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
