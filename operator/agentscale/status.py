"""Workflow status from what the children report. Pure: summaries in, a typed status out.

The status is built through the API models (``AgentWorkflowStatus``), which refuse keys the CRD schema lacks,
so a typo fails a unit test instead of being pruned silently by the API server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentscale.api.models import (
    AgentWorkflow,
    AgentWorkflowStatus,
    Condition,
    ReplicaStatus,
    Scaling,
)
from agentscale.pending import (
    GATEWAY_TOKENS_MISSING,
    MissingSecret,
    PendingPod,
    gateway_tokens_missing,
    gpu_short_message,
    labels_of,
    missing_secret,
    part_of,
    pending_pod,
    unschedulable,
)
from agentscale.render import labels as L
from agentscale.render import workflow_gpus
from agentscale.render.workers import TOKENS_VOLUME

__all__ = [
    "ANNOUNCED_CONDITIONS",
    "METRICS_UNAVAILABLE",
    "RESOURCE_CONTROLLER_CONDITIONS",
    "DeploymentSummary",
    "MissingSecret",
    "Observed",
    "PendingPod",
    "build_status",
    "compute_status",
    "metrics_condition",
    "missing_secret",
    "pending_pod",
    "status_patch",
    "summarize_deployment",
]

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
GPU_SHORT, UNSCHEDULABLE = "GPUCapacityShort", "Unschedulable"
METRICS_UNAVAILABLE = "MetricsUnavailable"
# Conditions whose turning True the workflow controller announces with a Warning Event on the workflow
# (reason and message of the condition).
ANNOUNCED_CONDITIONS: tuple[str, ...] = (GPU_SHORT, UNSCHEDULABLE, DEGRADED)
# Conditions the resource controller writes (server-side apply of its entries alone, field manager
# agentscale-resource-controller) and announces itself; the workflow controller's status never sets them
# and, given the live status (``Observed.live``), keeps them as they are in the list it writes.
RESOURCE_CONTROLLER_CONDITIONS: tuple[str, ...] = (METRICS_UNAVAILABLE,)


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


def summarize_deployment(body: Mapping[str, Any]) -> DeploymentSummary:
    meta, spec, st = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
    component, part = part_of(labels_of(body))
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


@dataclass
class Observed:
    """Everything status is computed from."""

    generation: int
    workflow: AgentWorkflow | None  # None when the spec is invalid
    problems: list[str] = field(default_factory=list)  # InvalidSpec messages
    apply_error: str = ""
    deployments: list[DeploymentSummary] = field(default_factory=list)
    pending: list[PendingPod] = field(default_factory=list)
    # pods of the namespace waiting for a Secret that does not exist (kubelet FailedMount Events)
    missing_secrets: list[MissingSecret] = field(default_factory=list)
    previous: Mapping[str, Any] = field(default_factory=dict)  # the status as it is now
    # The status as the watch last saw it, when the caller has it: the resource controller's conditions in
    # it are kept in the list written (a JSON merge patch replaces a list whole).
    live: Mapping[str, Any] | None = None


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    previous: Mapping[str, Mapping[str, Any]], ctype: str, status: bool, reason: str, message: str, gen: int
) -> Condition:
    value = "True" if status else "False"
    old = previous.get(ctype) or {}
    changed = old.get("status") != value
    return Condition(
        type=ctype,
        status=value,
        reason=reason,
        message=message,
        lastTransitionTime=now()
        if changed or not old.get("lastTransitionTime")
        else str(old["lastTransitionTime"]),
        observedGeneration=gen,
    )


def _conditions_of(status: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {
        str(c.get("type", "")): c for c in (status or {}).get("conditions") or [] if isinstance(c, Mapping)
    }


def metrics_condition(
    live: Mapping[str, Any] | None, unavailable: bool, reason: str, message: str, gen: int
) -> Condition:
    """The resource controller's ``MetricsUnavailable`` condition; lastTransitionTime kept from ``live``
    (the status as it is) while the status holds."""
    return _condition(_conditions_of(live), METRICS_UNAVAILABLE, unavailable, reason, message, gen)


def _kept(obs: Observed) -> list[Condition]:
    """The resource controller's conditions as the live status has them (none without ``obs.live``)."""
    out = []
    for ctype, c in _conditions_of(obs.live).items():
        if ctype in RESOURCE_CONTROLLER_CONDITIONS:
            try:
                out.append(Condition.model_validate(c, extra="ignore"))
            except ValueError:
                continue  # not ours to repair: its writer puts it right next cycle
    return out


def _floor(scaling: Scaling, desired: int) -> int:
    """Replicas wanted now. An autoscaler may not have raised a new Deployment to its floor yet: the floor is
    still what we want. In mode fixed the Deployment carries exactly what the operator rendered."""
    if scaling.operator_owns_replicas():
        return desired
    return max(desired, scaling.bounds()[0])


def compute_status(obs: Observed) -> dict[str, Any]:
    """The status block to write, as the API server stores it (see ``build_status``)."""
    return build_status(obs).to_dict()


def build_status(obs: Observed) -> AgentWorkflowStatus:
    """The status to write. Conditions keep lastTransitionTime while their status holds."""
    gen = obs.generation
    prev_conds = {
        c.get("type", ""): c for c in obs.previous.get("conditions") or [] if isinstance(c, Mapping)
    }

    if obs.workflow is None:
        msg = "; ".join(obs.problems) or "the spec is invalid"
        return AgentWorkflowStatus(
            observedGeneration=gen,
            conditions=[
                _condition(prev_conds, READY, False, "InvalidSpec", msg, gen),
                _condition(prev_conds, PROGRESSING, False, "InvalidSpec", "Waiting for a valid spec.", gen),
                _condition(prev_conds, DEGRADED, True, "InvalidSpec", msg, gen),
                _condition(prev_conds, GPU_SHORT, False, "InvalidSpec", "", gen),
                _condition(prev_conds, UNSCHEDULABLE, False, "InvalidSpec", "", gen),
                *_kept(obs),
            ],
        )

    wf = obs.workflow
    by_part = {(d.component, d.part): d for d in obs.deployments}
    pending_by_part: dict[tuple[str, str], int] = {}
    for p in obs.pending:
        pending_by_part[(p.component, p.part)] = pending_by_part.get((p.component, p.part), 0) + 1

    scaling = {(L.STEP, s.name): s.scaling for s in wf.spec.steps}
    scaling.update({(L.MODEL, m.name): m.scaling for m in wf.spec.models})

    def replicas(component: str, names: list[str]) -> tuple[dict[str, ReplicaStatus], int]:
        block: dict[str, ReplicaStatus] = {}
        ready_count = 0
        for n in names:
            d = by_part.get((component, n))
            desired, ready = (d.desired, d.ready) if d else (0, 0)
            if d is not None:
                desired = _floor(scaling[(component, n)], desired)
            block[n] = ReplicaStatus(
                desired=desired, ready=ready, pending=pending_by_part.get((component, n), 0)
            )
            if d is not None and d.settled and ready >= desired:
                ready_count += 1
        return block, ready_count

    step_names = [s.name for s in wf.spec.steps]
    model_names = [m.name for m in wf.spec.models]
    steps, steps_ready = replicas(L.STEP, step_names)
    models, models_ready = replicas(L.MODEL, model_names)

    expected = {(L.STEP, n) for n in step_names} | {(L.MODEL, n) for n in model_names}
    if wf.spec.gateway.enabled:
        expected.add((L.GATEWAY, ""))
    missing = sorted(f"{c}/{p}" if p else c for c, p in expected if (c, p) not in by_part)
    below_floor = {
        (c, p)
        for c, block in ((L.STEP, steps), (L.MODEL, models))
        for p, v in block.items()
        if v.ready < v.desired
    }
    unsettled = sorted(
        f"{d.component}/{d.part}" if d.part else d.component
        for d in obs.deployments
        if (d.component, d.part) in expected and (not d.settled or (d.component, d.part) in below_floor)
    )
    stuck = sorted(d.name for d in obs.deployments if d.deadline_exceeded)
    gpu_msg = gpu_short_message(obs.pending)
    unsched_reason, unsched_msg = unschedulable(obs.pending)
    # The kubelet's FailedMount Events outlive the wait (an hour), so they count only while the gateway's
    # Deployment is short of ready pods: once the Secret exists and the pods start, the reason clears.
    gw, gw_dep = wf.spec.gateway, by_part.get((L.GATEWAY, ""))
    tokens_msg = ""
    if gw.enabled and gw_dep is not None and not gw_dep.settled:
        tokens_msg = gateway_tokens_missing(
            wf.namespace, wf.name, gw.tokens_secret(wf.name), TOKENS_VOLUME, obs.missing_secrets
        )

    degraded_reason, degraded_msg = "AsExpected", ""
    if obs.apply_error:
        degraded_reason, degraded_msg = "ApplyFailed", obs.apply_error
    elif tokens_msg:
        degraded_reason, degraded_msg = GATEWAY_TOKENS_MISSING, tokens_msg
    elif stuck:
        degraded_reason = "ProgressDeadlineExceeded"
        degraded_msg = f"Deployments not progressing: {', '.join(stuck)}"
    conds = [
        _condition(
            prev_conds, GPU_SHORT, bool(gpu_msg), "InsufficientGPU" if gpu_msg else "Sufficient", gpu_msg, gen
        ),
        _condition(
            prev_conds, UNSCHEDULABLE, bool(unsched_msg), unsched_reason or "AsExpected", unsched_msg, gen
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
    elif unsched_msg:
        ready = (False, unsched_reason, unsched_msg)
    elif obs.apply_error:
        ready = (False, "ApplyFailed", obs.apply_error)
    elif tokens_msg:
        ready = (False, GATEWAY_TOKENS_MISSING, tokens_msg)
    elif missing or unsettled:
        ready = (False, "ReplicasNotReady", f"Not ready yet: {', '.join(missing + unsettled)}.")
    else:
        ready = (True, "AllReplicasReady", "Every step and model has its desired replicas ready.")
    conds.insert(0, _condition(prev_conds, READY, *ready, gen))
    conds += _kept(obs)

    status = AgentWorkflowStatus(
        observedGeneration=gen,
        conditions=conds,
        steps=steps,
        models=models,
        stepsReady=f"{steps_ready}/{len(step_names)}",
        modelsReady=f"{models_ready}/{len(model_names)}",
        gpus=workflow_gpus(wf, {part: d.desired for (_, part), d in by_part.items() if part}),
    )
    if wf.spec.gateway.enabled:
        status.endpoints = {"gateway": f"http://{wf.name}-gateway.{wf.namespace}.svc:8080"}
    return status


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
