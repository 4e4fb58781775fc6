"""Checks the API server cannot make with CEL, and parsing at the boundary into the typed model.

Everything here is pure: an object in, a list of problems out. The operator turns problems into a Degraded
condition with reason InvalidSpec and a Warning Event; it never raises on user input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from agentscale.api.models import AgentWorkflowSpec


class InvalidSpec(Exception):
    """The spec cannot be acted on. ``problems`` name the field and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _loc(loc: tuple[int | str, ...]) -> str:
    if loc[-1:] == ("[key]",):  # a bad map key: name the map, the message quotes the key
        loc = loc[:-2]
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_spec(spec: Mapping[str, Any]) -> AgentWorkflowSpec:
    """Validate a raw spec into the typed model, or raise InvalidSpec naming each bad field."""
    try:
        parsed = AgentWorkflowSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidSpec([f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]) from None
    problems = semantic_problems(parsed)
    if problems:
        raise InvalidSpec(problems)
    return parsed


def find_cycle(edges: Mapping[str, list[str]]) -> list[str] | None:
    """Return one cycle in a directed graph as a closed path (a -> b -> a), or None. Iterative DFS."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    for root in edges:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            succ = edges.get(node, [])
            if i < len(succ):
                stack[-1] = (node, i + 1)
                nxt = succ[i]
                if nxt not in color:
                    continue
                if color[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return None


def semantic_problems(spec: AgentWorkflowSpec) -> list[str]:
    """What CEL cannot (or may not, on an older API server) check. Each message names the field and fix."""
    problems: list[str] = []
    step_names = [s.name for s in spec.steps]
    model_names = [m.name for m in spec.models]
    for kind, names in (("steps", step_names), ("models", model_names)):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"spec.{kind}: duplicate names {', '.join(dupes)}; names must be unique")
    for s in spec.steps:
        if s.model and s.model not in model_names:
            problems.append(f"spec.steps[{s.name}].model: {s.model!r} is not in spec.models")
        for n in s.next:
            if n not in step_names:
                problems.append(f"spec.steps[{s.name}].next: {n!r} is not a step")
    clash = sorted(set(step_names) & set(model_names))
    if clash:
        problems.append(f"spec: {', '.join(clash)} named both a step and a model; rename one")
    problems.extend(_mirrored_cel_problems(spec))
    cycle = find_cycle({s.name: list(s.next) for s in spec.steps})
    if cycle:
        problems.append(
            f"spec.steps[].next: cycle {' -> '.join(cycle)}; "
            "the steps must form a DAG, remove one of these links"
        )
    return problems


def _mirrored_cel_problems(spec: AgentWorkflowSpec) -> list[str]:
    """The CRD's CEL rules again, for objects stored before a rule existed or on servers without CEL."""
    out: list[str] = []
    q = spec.queue
    if (q.redisUrl is None) == (q.redisSecretRef is None):
        out.append("spec.queue: set exactly one of redisUrl or redisSecretRef")
    parts = [(f"spec.steps[{s.name}]", s.gpu, s.scaling) for s in spec.steps]
    parts += [(f"spec.models[{m.name}]", m.gpu, m.scaling) for m in spec.models]
    for where, gpu, sc in parts:
        if gpu is not None and gpu.count is not None and gpu.migProfile is not None:
            out.append(f"{where}.gpu: set either count (whole GPUs) or migProfile (one MIG slice), not both")
        if gpu is not None and gpu.count is None and gpu.migProfile is None:
            out.append(f"{where}.gpu: set count (whole GPUs) or migProfile (one MIG slice)")
        if sc.minReplicas > sc.maxReplicas:
            out.append(
                f"{where}.scaling: minReplicas ({sc.minReplicas}) must be <= maxReplicas ({sc.maxReplicas})"
            )
        elif sc.operator_owns_replicas() and not sc.minReplicas <= sc.replicas <= sc.maxReplicas:
            out.append(f"{where}.scaling.replicas ({sc.replicas}) must lie within [minReplicas, maxReplicas]")
    for m in spec.models:
        db = m.dynamicBatching
        if db is not None and m.maxBatchSize == 0:
            out.append(f"spec.models[{m.name}].dynamicBatching needs maxBatchSize > 0")
        if db is not None and any(b > m.maxBatchSize for b in db.preferredBatchSizes):
            out.append(
                f"spec.models[{m.name}].dynamicBatching.preferredBatchSizes must each be <= maxBatchSize"
            )
    return out
