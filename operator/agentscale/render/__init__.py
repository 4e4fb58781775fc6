"""Pure rendering: an AgentWorkflow in, the Kubernetes objects it needs out. No I/O, no kopf."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentscale.api.models import API_VERSION, KIND, AgentWorkflow
from agentscale.render import identity, scaling, triton, workers
from agentscale.render import labels as L
from agentscale.render.pods import gpu_resource

__all__ = ["ChildKey", "child_key", "render_workflow", "spec_hash", "workflow_gpus"]

ChildKey = tuple[str, str]  # (kind, name)


def child_key(obj: dict[str, Any]) -> ChildKey:
    return (str(obj["kind"]), str(obj["metadata"]["name"]))


def spec_hash(obj: dict[str, Any]) -> str:
    """A stable hash of what we render for an object (before the hash annotation is added)."""
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _owned(obj: dict[str, Any], wf: AgentWorkflow, uid: str | None) -> dict[str, Any]:
    digest = spec_hash(obj)
    meta = obj["metadata"]
    meta.setdefault("annotations", {})[L.HASH_ANNOTATION] = digest
    if uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": wf.name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return obj


def render_workflow(wf: AgentWorkflow, uid: str | None = None) -> list[dict[str, Any]]:
    """Every child object of the workflow, in apply order (identity and network policy before any pod, config
    before the servers that mount it)."""
    out: list[dict[str, Any]] = []
    account = identity.service_account(wf)
    if account is not None:
        out.append(account)
    out.extend(identity.network_policies(wf))
    for model in wf.spec.models:
        out.append(triton.config_map(wf, model))
        out.append(triton.service(wf, model))
        out.append(triton.deployment(wf, model))
        for extra in (
            scaling.hpa(wf, L.MODEL, model.name, model.scaling),
            scaling.pdb(wf, L.MODEL, model.name, model.scaling),
        ):
            if extra is not None:
                out.append(extra)
    for step in wf.spec.steps:
        out.append(workers.step_deployment(wf, step))
        for extra in (
            scaling.hpa(wf, L.STEP, step.name, step.scaling),
            scaling.pdb(wf, L.STEP, step.name, step.scaling),
        ):
            if extra is not None:
                out.append(extra)
    if wf.spec.gateway.enabled:
        out.append(workers.gateway_deployment(wf))
        out.append(workers.gateway_service(wf))
    return [_owned(obj, wf, uid) for obj in out]


def workflow_gpus(wf: AgentWorkflow, replicas: dict[str, int] | None = None) -> int:
    """GPUs (or MIG slices) the workflow asks for: per-pod request times replicas (desired or given)."""
    total = 0
    for part, gpu, sc in [(s.name, s.gpu, s.scaling) for s in wf.spec.steps] + [
        (m.name, m.gpu, m.scaling) for m in wf.spec.models
    ]:
        if gpu is None:
            continue
        _, per_pod = gpu_resource(gpu)
        n = (replicas or {}).get(part)
        if n is None:
            n = sc.nominal_replicas()
        total += per_pod * n
    return total
