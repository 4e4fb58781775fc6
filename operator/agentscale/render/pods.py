"""Pod-level building blocks: placement (the GPU's and the spec's), identity, the restricted security
profile, resources, probes and scratch volumes."""

from __future__ import annotations

from typing import Any

from agentscale.api.models import GPU, AgentWorkflow, GPUSharing, Resources, parse_quantity
from agentscale.api.placement import PRODUCT_LABEL, Placement, dedupe, merge
from agentscale.render import labels as L

GPU_RESOURCE = "nvidia.com/gpu"
SHARED_GPU_RESOURCE = "nvidia.com/gpu.shared"
GPU_TAINT_KEY = "nvidia.com/gpu"


def gpu_resource(gpu: GPU) -> tuple[str, int]:
    """The extended resource one pod requests, and how many."""
    if gpu.migProfile:
        return f"nvidia.com/mig-{gpu.migProfile}", 1
    count = gpu.count or 1
    if gpu.sharing == GPUSharing.TimeSliced:
        return SHARED_GPU_RESOURCE, count
    return GPU_RESOURCE, count


def service_account_name(wf: AgentWorkflow) -> str:
    """The ServiceAccount every pod of the workflow runs as (``render/identity.py`` renders our own)."""
    return wf.spec.serviceAccount.name or L.child_name(wf, L.WORKFLOW)


def identity(wf: AgentWorkflow) -> dict[str, Any]:
    """The pod spec fields naming the ServiceAccount and whether its API token is mounted (off unless the
    spec asks: the workflow's pods do not call the Kubernetes API)."""
    return {
        "serviceAccountName": service_account_name(wf),
        "automountServiceAccountToken": wf.spec.serviceAccount.automountToken,
    }


def resources(
    res: Resources, gpu: GPU | None, default_requests: dict[str, str], default_memory_limit: str
) -> dict[str, Any]:
    """Requests and limits: the spec's over the defaults. The memory limit defaults to
    ``default_memory_limit``, or to the memory request where that is larger (a limit below the request is
    invalid). No CPU limit by default: throttling a latency-bound worker costs more than it protects."""
    requests: dict[str, Any] = {**default_requests, **res.requests}
    limits: dict[str, Any] = dict(res.limits)
    if "memory" not in limits:
        request = parse_quantity(requests.get("memory", 0)) or 0
        default = parse_quantity(default_memory_limit) or 0
        limits["memory"] = requests["memory"] if request > default else default_memory_limit
    if gpu is not None:
        name, count = gpu_resource(gpu)
        limits[name] = count
    return {"requests": requests, "limits": limits}


def probe(check: dict[str, Any], period: int, failures: int, timeout: int) -> dict[str, Any]:
    """One probe with an explicit timeout (Kubernetes' default of 1 s fails a busy but healthy process)."""
    return {**check, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": timeout}


def empty_dir(name: str, size_limit: str | int) -> dict[str, Any]:
    """A scratch volume with a size limit: a pod that writes more is evicted, the node's disk is spared."""
    return {"name": name, "emptyDir": {"sizeLimit": size_limit}}


def placement(gpu: GPU | None, selector: dict[str, str], *layers: Placement | None) -> dict[str, Any]:
    """nodeSelector, tolerations and topology spread for a pod. GPU pods get the GPU product's node label
    and tolerate the GPU taint; ``layers`` (the workflow's placement, then the part's) add to both as
    ``api/placement.merge`` says. A key left empty is left out, so a pod without any stays as before."""
    out: dict[str, Any] = {
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(selector)},
            }
        ]
    }
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if gpu is not None:
        if gpu.product:
            node_selector[PRODUCT_LABEL] = gpu.product
        tolerations.append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    user = merge(*layers)
    # A product in the user's selector that differs from gpu.product is refused by validation
    # (placement_problems); should one get here, the GPU request's own product stands.
    node_selector = {**user.nodeSelector, **node_selector}
    tolerations = dedupe(tolerations + [t.to_dict() for t in user.tolerations])
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    return out


# uid/gid 10001, as the project's images (images/*.Dockerfile) run: above the range host accounts use.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}

CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def strategy(gpu: GPU | None) -> dict[str, Any]:
    """GPU pools are usually full: surge would wait for a free GPU, so replace in place instead."""
    if gpu is not None:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
