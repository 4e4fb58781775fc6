"""Workflow status from what the children report. Pure: summaries in, a status dict out."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentscale.api.models import AgentWorkflow
from agentscale.render import labels as L
from agentscale.render import workflow_gpus

READY, PROGRESSING, DEGRADED, GPU_SHORT = "Ready", "Progressing", "Degraded", "GPUCapacityShort"
_GPU_RESOURCE = re.compile(r"^nvidia\.com/(gpu(\.shared)?|mig-.+)$")


@dataclass(frozen=True)
class DeploymentSummary:
    name: str
    component: str  # step | model | gateway
    part: str  # step or model name ("" for the gateway)
    desired: int
    ready: int
    updated: int
    generation_seen: bool
    deadline_exceeded: bool
    spec_hash: str

    @property
    def settled(self) -> bool:
        return self.generation_seen and self.updated >= self.desired and self.ready >= self.desired


@dataclass(frozen=True)
class PendingPod:
    name: str
    component: str
    part: str
    message: str
    gpu_resource: str
    gpus: int

    @property
    def short_of_gpus(self) -> bool:
        return bool(self.gpu_resource) and "Insufficient nvidia.com/" in self.message


def _labels(body: Mapping[str, Any]) -> Mapping[str, str]:
    return body.get("metadata", {}).get("labels") or {}


def _part(labels: Mapping[str, str]) -> tuple[str, str]:
    component = labels.get(L.COMPONENT_LABEL, "")
    part = labels.get(L.STEP_LABEL) or labels.get(L.MODEL_LABEL) or ""
    return component, part


def summarize_deployment(body: Mapping[str, Any]) -> DeploymentSummary:
    meta, spec, st = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
    component, part = _part(_labels(body))
    conds = {c.get("type"): c for c in st.get("conditions") or []}
    progressing = conds.get("Progressing") or {}
    return DeploymentSummary(
        name=meta.get("name", ""),
        component=component,
        part=part,
        desired=int(spec.get("replicas", 1) or 0),
        ready=int(st.get("readyReplicas") or 0),
        updated=int(st.get("updatedReplicas") or 0),
        generation_seen=int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
        deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
        spec_hash=(meta.get("annotations") or {}).get(L.HASH_ANNOTATION, ""),
    )


def pending_pod(body: Mapping[str, Any]) -> PendingPod | None:
    """A pod the scheduler could not place, or None for every other pod."""
    st = body.get("status") or {}
    if st.get("phase") != "Pending" or body.get("spec", {}).get("nodeName"):
        return None
    cond = next((c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if not cond or cond.get("status") != "False" or cond.get("reason") != "Unschedulable":
        return None
    component, part = _part(_labels(body))
    resource, count = "", 0
    for c in body.get("spec", {}).get("containers") or []:
        for k, v in ((c.get("resources") or {}).get("limits") or {}).items():
            if _GPU_RESOURCE.match(k):
                resource, count = k, count + int(v)
    return PendingPod(
        name=body.get("metadata", {}).get("name", ""),
        component=component,
        part=part,
        message=str(cond.get("message", "")),
        gpu_resource=resource,
        gpus=count,
    )


@dataclass
class Observed:
    """Everything status is computed from."""

    generation: int
    workflow: AgentWorkflow | None  # None when the spec is invalid
    problems: list[str] = field(default_factory=list)  # InvalidSpec messages
    apply_error: str = ""
    deployments: list[DeploymentSummary] = field(default_factory=list)
    pending: list[PendingPod] = field(default_factory=list)
    previous: Mapping[str, Any] = field(default_factory=dict)  # the status as it is now


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    previous: Mapping[str, Mapping[str, Any]], ctype: str, status: bool, reason: str, message: str, gen: int
) -> dict[str, Any]:
    value = "True" if status else "False"
    old = previous.get(ctype) or {}
    changed = old.get("status") != value
    return {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now()
        if changed or not old.get("lastTransitionTime")
        else old["lastTransitionTime"],
        "observedGeneration": gen,
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def gpu_short_message(pending: Iterable[PendingPod]) -> str:
    short = [p for p in pending if p.short_of_gpus]
    if not short:
        return ""
    by_part: dict[tuple[str, str, str, int], int] = {}
    for p in short:
        key = (p.component, p.part, p.gpu_resource, p.gpus)
        by_part[key] = by_part.get(key, 0) + 1
    parts = [
        f"{comp}/{part} x{n} ({per} {res} each)" for (comp, part, res, per), n in sorted(by_part.items())
    ]
    totals: dict[str, int] = {}
    for p in short:
        totals[p.gpu_resource] = totals.get(p.gpu_resource, 0) + p.gpus
    need = ", ".join(f"{v} {k}" for k, v in sorted(totals.items()))
    return (
        f"{_plural(len(short), 'pod')} cannot be scheduled for lack of GPUs: {'; '.join(parts)}; "
        f"{need} more than the nodes can fit. Scheduler: {short[0].message} "
        "Add GPU nodes, lower replicas or GPUs per pod, or free GPUs used by other workloads."
    )


def compute_status(obs: Observed) -> dict[str, Any]:
    """The status block to write. Conditions keep lastTransitionTime while their status holds."""
    gen = obs.generation
    prev_conds = {c.get("type", ""): c for c in obs.previous.get("conditions") or []}
    out: dict[str, Any] = {"observedGeneration": gen}

    if obs.workflow is None:
        msg = "; ".join(obs.problems) or "the spec is invalid"
        out["conditions"] = [
            _condition(prev_conds, READY, False, "InvalidSpec", msg, gen),
            _condition(prev_conds, PROGRESSING, False, "InvalidSpec", "Waiting for a valid spec.", gen),
            _condition(prev_conds, DEGRADED, True, "InvalidSpec", msg, gen),
            _condition(prev_conds, GPU_SHORT, False, "InvalidSpec", "", gen),
        ]
        return out

    wf = obs.workflow
    by_part = {(d.component, d.part): d for d in obs.deployments}
    pending_by_part: dict[tuple[str, str], int] = {}
    for p in obs.pending:
        pending_by_part[(p.component, p.part)] = pending_by_part.get((p.component, p.part), 0) + 1

    # An autoscaler may not have raised a new Deployment to its floor yet: the floor is still what we want.
    floors = {(L.STEP, s.name): s.scaling for s in wf.spec.steps}
    floors.update({(L.MODEL, m.name): m.scaling for m in wf.spec.models})

    def replicas(component: str, names: list[str]) -> tuple[dict[str, Any], int]:
        block: dict[str, Any] = {}
        ready_count = 0
        for n in names:
            d = by_part.get((component, n))
            desired, ready = (d.desired, d.ready) if d else (0, 0)
            sc = floors[(component, n)]
            if d is not None and sc.mode.value != "fixed":
                desired = max(desired, sc.minReplicas, 1 if sc.mode.value == "hpa" else 0)
            block[n] = {"desired": desired, "ready": ready, "pending": pending_by_part.get((component, n), 0)}
            if d is not None and d.settled and ready >= desired:
                ready_count += 1
        return block, ready_count

    step_names = [s.name for s in wf.spec.steps]
    model_names = [m.name for m in wf.spec.models]
    out["steps"], steps_ready = replicas(L.STEP, step_names)
    out["models"], models_ready = replicas(L.MODEL, model_names)
    out["stepsReady"] = f"{steps_ready}/{len(step_names)}"
    out["modelsReady"] = f"{models_ready}/{len(model_names)}"
    out["gpus"] = workflow_gpus(wf, {part: d.desired for (_, part), d in by_part.items() if part})
    if wf.spec.gateway.enabled:
        out["endpoints"] = {"gateway": f"http://{wf.name}-gateway.{wf.namespace}.svc:8080"}

    expected = {(L.STEP, n) for n in step_names} | {(L.MODEL, n) for n in model_names}
    if wf.spec.gateway.enabled:
        expected.add((L.GATEWAY, ""))
    missing = sorted(f"{c}/{p}" if p else c for c, p in expected if (c, p) not in by_part)
    below_floor = {
        (c, p)
        for c, kind in ((L.STEP, "steps"), (L.MODEL, "models"))
        for p, v in out[kind].items()
        if v["ready"] < v["desired"]
    }
    unsettled = sorted(
        f"{d.component}/{d.part}" if d.part else d.component
        for d in obs.deployments
        if (d.component, d.part) in expected and (not d.settled or (d.component, d.part) in below_floor)
    )
    stuck = sorted(d.name for d in obs.deployments if d.deadline_exceeded)
    gpu_msg = gpu_short_message(obs.pending)

    degraded_reason, degraded_msg = "AsExpected", ""
    if obs.apply_error:
        degraded_reason, degraded_msg = "ApplyFailed", obs.apply_error
    elif stuck:
        degraded_reason = "ProgressDeadlineExceeded"
        degraded_msg = f"Deployments not progressing: {', '.join(stuck)}"
    conds = [
        _condition(
            prev_conds, GPU_SHORT, bool(gpu_msg), "InsufficientGPU" if gpu_msg else "Sufficient", gpu_msg, gen
        ),
        _condition(prev_conds, DEGRADED, degraded_reason != "AsExpected", degraded_reason, degraded_msg, gen),
    ]
    if missing or unsettled:
        waiting = ", ".join(missing + unsettled)
        conds.append(_condition(prev_conds, PROGRESSING, True, "RollingOut", f"Waiting for {waiting}.", gen))
    else:
        conds.append(
            _condition(prev_conds, PROGRESSING, False, "Complete", "All children are up to date.", gen)
        )
    if gpu_msg:
        ready = (False, "GPUCapacityShort", gpu_msg)
    elif obs.apply_error:
        ready = (False, "ApplyFailed", obs.apply_error)
    elif missing or unsettled:
        ready = (False, "ReplicasNotReady", f"Not ready yet: {', '.join(missing + unsettled)}.")
    else:
        ready = (True, "AllReplicasReady", "Every step and model has its desired replicas ready.")
    conds.insert(0, _condition(prev_conds, READY, *ready, gen))
    out["conditions"] = conds
    return out


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON merge patch that turns ``old`` into ``new`` for the keys we own, or None if nothing changes.

    Map entries that disappeared (a removed step) are set to null so the merge patch deletes them; keys we
    do not own (lastScalingDecision, written by the resource controller) are left alone.
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            sub: dict[str, Any] = {k: v for k, v in value.items() if before.get(k) != v}
            sub.update({k: None for k in before if k not in value})
            patch[key] = sub
        else:
            patch[key] = value
    return patch or None
