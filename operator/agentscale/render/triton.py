"""Triton model servers: config.pbtxt (ConfigMap), Deployment and headless Service per model."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentscale.api.models import DEFAULT_TRITON_MEMORY_LIMIT, AgentWorkflow, Backend, BatchKind, ModelServer
from agentscale.render import labels as L
from agentscale.render import pods

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
MODEL_ROOT = "/models"
TRITON_DEFAULT_REQUESTS = {"cpu": "1", "memory": "2Gi"}
TRITON_DEFAULT_MEMORY_LIMIT = DEFAULT_TRITON_MEMORY_LIMIT
TRITON_CONTAINER = "triton"
"""A model server pod's main container (right-sizing resizes it in place)."""
# The init container that copies the model: cp needs little memory (page cache is reclaimable).
STAGE_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}

# Backends Triton names by platform rather than backend.
_PLATFORM = {Backend.tensorrt: "tensorrt_plan", Backend.tensorflow: "tensorflow_savedmodel"}


def _q(value: str) -> str:
    """A protobuf text-format string literal."""
    return json.dumps(value)


def config_pbtxt(model: ModelServer) -> str:
    """Triton's model configuration for one model (inputs and outputs come from the model itself)."""
    lines = [f"name: {_q(model.name)}"]
    if model.backend in _PLATFORM:
        lines.append(f"platform: {_q(_PLATFORM[model.backend])}")
    else:
        lines.append(f"backend: {_q(model.backend.value)}")
    lines.append(f"max_batch_size: {model.maxBatchSize}")
    db = model.dynamicBatching
    if db is not None:
        lines.append("dynamic_batching {")
        if db.preferredBatchSizes:
            sizes = ", ".join(str(b) for b in sorted(set(db.preferredBatchSizes)))
            lines.append(f"  preferred_batch_size: [ {sizes} ]")
        lines.append(f"  max_queue_delay_microseconds: {db.maxQueueDelayMicroseconds}")
        lines.append(f"  preserve_ordering: {'true' if db.preserveOrdering else 'false'}")
        lines.append("}")
    lines.append("instance_group [")
    groups = []
    for g in model.instanceGroups:
        kind = g.kind
        if kind == BatchKind.AUTO:
            kind = BatchKind.GPU if model.gpu is not None else BatchKind.CPU
        groups.append(f"  {{\n    count: {g.count}\n    kind: KIND_{kind.value}\n  }}")
    lines.append(",\n".join(groups))
    lines.append("]")
    for key in sorted(model.parameters):
        lines.append(
            f"parameters: {{\n  key: {_q(key)}\n  value: {{ string_value: {_q(model.parameters[key])} }}\n}}"
        )
    if model.responseCache is not None and model.responseCache.enabled:
        lines.append("response_cache {\n  enable: true\n}")
    return "\n".join(lines) + "\n"


def cache_args(model: ModelServer) -> list[str]:
    """The server arguments of the model's response cache: Triton's local cache of ``responseCache.size``
    bytes (one model per server, so the server's cache is this model's); none without the cache."""
    if model.responseCache is None or not model.responseCache.enabled:
        return []
    return [f"--cache-config=local,size={model.responseCache.size_bytes()}"]


def config_map_name(wf: AgentWorkflow, model: ModelServer) -> str:
    return L.child_name(wf, f"{model.name}-config")


def config_map(wf: AgentWorkflow, model: ModelServer) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(wf, model),
            "namespace": wf.namespace,
            "labels": L.labels(wf, L.MODEL, model.name),
        },
        "data": {"config.pbtxt": config_pbtxt(model)},
    }


def _source(model: ModelServer) -> tuple[str, dict[str, Any] | None]:
    """Where the init container copies the model from, and the volume that holds it (PVC) if any."""
    repo = model.modelRepository
    if repo.startswith("pvc://"):
        claim, _, sub = repo[len("pvc://") :].partition("/")
        volume = {"name": "model-source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        return f"/model-source/{sub}".rstrip("/"), volume
    path = repo[len("file://") :] if repo.startswith("file://") else repo
    return path.rstrip("/") or "/", None


def deployment(wf: AgentWorkflow, model: ModelServer) -> dict[str, Any]:
    selector = L.selector_labels(wf, L.MODEL, model.name)
    src, source_volume = _source(model)
    dest = f"{MODEL_ROOT}/{model.name}"
    config_hash = hashlib.sha256(config_pbtxt(model).encode()).hexdigest()[:16]
    mounts = [{"name": "models", "mountPath": MODEL_ROOT}, {"name": "tmp", "mountPath": "/tmp"}]
    init_mounts = [
        {"name": "models", "mountPath": MODEL_ROOT},
        {"name": "config", "mountPath": "/config", "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [
        pods.empty_dir("models", model.modelVolumeSizeLimit),
        pods.empty_dir("tmp", model.tmpSizeLimit),
        {"name": "config", "configMap": {"name": config_map_name(wf, model)}},
    ]
    if source_volume is not None:
        volumes.append(source_volume)
        init_mounts.append({"name": "model-source", "mountPath": "/model-source", "readOnly": True})
    stage = {
        "name": "stage-model",
        "image": model.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c"],
        "args": [
            'set -eu; rm -rf "$DEST"; cp -R "$SRC" "$DEST"; cp /config/config.pbtxt "$DEST/config.pbtxt"',
        ],
        "env": [{"name": "SRC", "value": f"{src}/{model.name}"}, {"name": "DEST", "value": dest}],
        "volumeMounts": init_mounts,
        "securityContext": dict(pods.CONTAINER_SECURITY),
        "resources": {k: dict(v) for k, v in STAGE_RESOURCES.items()},
    }
    ready = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    live = {"httpGet": {"path": "/v2/health/live", "port": "http"}}
    server = {
        "name": TRITON_CONTAINER,
        "image": model.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={MODEL_ROOT}",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            "--allow-metrics=true",
            f"--allow-gpu-metrics={'true' if model.gpu is not None else 'false'}",
            "--strict-readiness=true",
            "--log-verbose=0",
            *cache_args(model),
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": pods.resources(
            model.resources, model.gpu, TRITON_DEFAULT_REQUESTS, TRITON_DEFAULT_MEMORY_LIMIT
        ),
        "securityContext": dict(pods.CONTAINER_SECURITY),
        "volumeMounts": mounts,
        "startupProbe": pods.probe(ready, 5, 120, model.probeTimeoutSeconds),
        "readinessProbe": pods.probe(ready, 5, 3, model.probeTimeoutSeconds),
        "livenessProbe": pods.probe(live, 10, 6, model.probeTimeoutSeconds),
    }
    pod_spec: dict[str, Any] = {
        **pods.identity(wf),
        "securityContext": dict(pods.POD_SECURITY),
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": False,
        "initContainers": [stage],
        "containers": [server],
        "volumes": volumes,
        **pods.placement(model.gpu, selector, wf.spec.placement, model.placement),
    }
    if wf.spec.priorityClassName:
        pod_spec["priorityClassName"] = wf.spec.priorityClassName
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "revisionHistoryLimit": 3,
        "strategy": pods.strategy(model.gpu),
        "template": {
            "metadata": {
                "labels": L.labels(wf, L.MODEL, model.name),
                "annotations": {
                    L.CONFIG_HASH_ANNOTATION: config_hash,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                    **model.podAnnotations,
                },
            },
            "spec": pod_spec,
        },
    }
    replicas = model.scaling.rendered_replicas()
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": L.child_name(wf, model.name),
            "namespace": wf.namespace,
            "labels": L.labels(wf, L.MODEL, model.name),
        },
        "spec": spec,
    }


def service(wf: AgentWorkflow, model: ModelServer) -> dict[str, Any]:
    """Headless, so step workers see every replica and balance across them themselves. HTTP and gRPC only:
    metrics are scraped from the pods' ``metrics`` port (the chart's PodMonitor), not through the Service."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": L.child_name(wf, model.name),
            "namespace": wf.namespace,
            "labels": L.labels(wf, L.MODEL, model.name),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": L.selector_labels(wf, L.MODEL, model.name),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }
