"""Split a workflow's end-to-end p95 target into per-step and per-model latency budgets along the DAG.

Each step weighs its measured p95 latency. A step's budget is the target times its weight over the weight of
the heaviest source-to-sink path through it::

    budget(s) = T x w(s) / L(s),   L(s) = heaviest path through s

On the critical path (the heaviest path of all) the budgets are the target in proportion to measured latency;
a step off it gets a larger share, because its path is lighter. Every path's budgets sum to at most T (each
step's L(s) is at least the weight of any path through it), so a workflow whose steps each meet their budget
meets the target on every path. Budgets move with the measurements each cycle.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.snapshot import WorkflowSnapshot


def step_weights(snap: WorkflowSnapshot, cfg: PolicyConfig) -> dict[str, float]:
    """Each step's measured p95 (seconds); unmeasured steps weigh the mean of the measured ones (1 each when
    none is measured); no step weighs less than ``budget_weight_floor`` x the heaviest."""
    measured = {
        p.name: p.signals.p95_latency_s
        for p in snap.steps
        if p.signals.p95_latency_s is not None and p.signals.p95_latency_s > 0
    }
    fallback = sum(measured.values()) / len(measured) if measured else 1.0
    weights = {p.name: measured.get(p.name, fallback) for p in snap.steps}
    floor = cfg.budget_weight_floor * max(weights.values(), default=0.0)
    return {name: max(w, floor) for name, w in weights.items()}


def heaviest_paths(snap: WorkflowSnapshot, weights: Mapping[str, float]) -> dict[str, float]:
    """For each step, the weight of the heaviest source-to-sink path that passes through it."""
    order, preds = snap.step_order(), snap.step_inputs
    nexts = {p.name: p.next for p in snap.steps}
    up: dict[str, float] = {}  # heaviest path from a source, ending at the step (inclusive)
    for name in order:
        up[name] = weights[name] + max([up[p] for p in preds[name]], default=0.0)
    down: dict[str, float] = {}  # heaviest path from the step (inclusive) to a sink
    for name in reversed(order):
        down[name] = weights[name] + max([down[n] for n in nexts[name]], default=0.0)
    return {name: up[name] + down[name] - weights[name] for name in order}


def step_budgets(snap: WorkflowSnapshot, cfg: PolicyConfig) -> dict[str, float]:
    """Step name -> its latency budget in seconds."""
    weights = step_weights(snap, cfg)
    paths = heaviest_paths(snap, weights)
    return {name: snap.slo_p95_s * weights[name] / paths[name] for name in weights}


def model_budgets(snap: WorkflowSnapshot, steps: Mapping[str, float], cfg: PolicyConfig) -> dict[str, float]:
    """Model name -> its latency budget in seconds: the tightest over the steps that call it of the step's
    budget times the model's share of that step's latency (measured model p95 / step p95, at most 1; else
    ``model_budget_share``). A model no step calls gets the share of the whole target."""
    by_name = {p.name: p for p in snap.steps}
    out: dict[str, float] = {}
    for m in snap.models:
        callers = [by_name[s] for s in steps if by_name[s].model == m.name]
        if not callers:
            out[m.name] = snap.slo_p95_s * cfg.model_budget_share
            continue
        budgets = []
        for step in callers:
            mp, sp = m.signals.p95_latency_s, step.signals.p95_latency_s
            share = min(mp / sp, 1.0) if mp and sp and mp > 0 and sp > 0 else cfg.model_budget_share
            budgets.append(steps[step.name] * share)
        out[m.name] = min(budgets)
    return out


def budgets(snap: WorkflowSnapshot, cfg: PolicyConfig) -> dict[str, float]:
    """Part key (``step/<name>``, ``model/<name>``) -> latency budget in seconds."""
    steps = step_budgets(snap, cfg)
    models = model_budgets(snap, steps, cfg)
    return {p.key: steps[p.name] for p in snap.steps} | {m.key: models[m.name] for m in snap.models}
