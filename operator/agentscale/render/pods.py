"""Pod-level building blocks: GPU placement, the restricted security profile, resources."""

from __future__ import annotations

from typing import Any

from agentscale.api.models import GPU, GPUSharing, Resources

GPU_RESOURCE = "nvidia.com/gpu"
SHARED_GPU_RESOURCE = "nvidia.com/gpu.shared"
PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT_KEY = "nvidia.com/gpu"


def gpu_resource(gpu: GPU) -> tuple[str, int]:
    """The extended resource one pod requests, and how many."""
    if gpu.migProfile:
        return f"nvidia.com/mig-{gpu.migProfile}", 1
    count = gpu.count or 1
    if gpu.sharing == GPUSharing.TimeSliced:
        return SHARED_GPU_RESOURCE, count
    return GPU_RESOURCE, count


def resources(res: Resources, gpu: GPU | None, default_requests: dict[str, str]) -> dict[str, Any]:
    requests: dict[str, Any] = {**default_requests, **res.requests}
    limits: dict[str, Any] = dict(res.limits)
    if gpu is not None:
        name, count = gpu_resource(gpu)
        limits[name] = count
    out: dict[str, Any] = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def placement(gpu: GPU | None, selector: dict[str, str]) -> dict[str, Any]:
    """nodeSelector, tolerations and topology spread for a pod; GPU pods tolerate the GPU taint."""
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
    if gpu is None:
        return out
    if gpu.product:
        out["nodeSelector"] = {PRODUCT_LABEL: gpu.product}
    out["tolerations"] = [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    return out


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
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
