"""Step worker and gateway Deployments (and the gateway Service).

The gateway's bearer tokens come from a Secret the user creates (the operator has no access to Secrets): it is
mounted read-only at ``TOKENS_DIR``, one file per key, without subPath, so the kubelet refreshes rotated keys
in place and the gateway, which re-reads the directory every 5 s, picks them up without a restart. A missing
Secret keeps the gateway pods in ContainerCreating (the kubelet's FailedMount event; ``pending.py`` reads
it as ``GatewayTokensMissing``). The client Service carries the HTTP port only: metrics are scraped from
the pods (the chart's PodMonitor), not through it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentscale.api.models import AgentWorkflow, Step
from agentscale.api.placement import Placement
from agentscale.render import labels as L
from agentscale.render import pods

METRICS_PORT = 9090
GATEWAY_PORT = 8080
TOKENS_VOLUME = "gateway-tokens"
TOKENS_DIR = "/var/run/agentscale/gateway-tokens"
TOKENS_MODE = 0o440  # owner root, group the pod's fsGroup (10001): the gateway reads, nobody else
WORKER_DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}
WORKER_DEFAULT_MEMORY_LIMIT = "1Gi"
WORKER_CONTAINER = "worker"
"""A step pod's main container (right-sizing resizes it in place)."""


def graph_json(wf: AgentWorkflow) -> str:
    """The DAG every worker and the gateway read from AGENTSCALE_GRAPH (compact, stable key order)."""
    graph = {
        "steps": {s.name: {"model": s.model, "next": list(s.next)} for s in wf.spec.steps},
        "priority": wf.spec.priority.value,
        "slo": {
            "p95LatencyMs": wf.spec.slo.p95LatencyMs,
            "targetThroughputRps": wf.spec.slo.targetThroughputRps,
        },
    }
    return json.dumps(graph, separators=(",", ":"), sort_keys=True)


def _redis_env(wf: AgentWorkflow) -> dict[str, Any]:
    q = wf.spec.queue
    if q.redisSecretRef is not None:
        ref = q.redisSecretRef
        return {
            "name": "AGENTSCALE_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
    return {"name": "AGENTSCALE_REDIS_URL", "value": q.redisUrl or ""}


def common_env(wf: AgentWorkflow) -> list[dict[str, Any]]:
    return [
        {"name": "AGENTSCALE_WORKFLOW", "value": wf.name},
        {"name": "AGENTSCALE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        _redis_env(wf),
        {"name": "AGENTSCALE_GRAPH", "value": graph_json(wf)},
        {"name": "AGENTSCALE_PRIORITY", "value": wf.spec.priority.value},
        {"name": "AGENTSCALE_METRICS_PORT", "value": str(METRICS_PORT)},
    ]


def step_env(wf: AgentWorkflow, step: Step) -> list[dict[str, Any]]:
    env = common_env(wf)
    env += [
        {"name": "AGENTSCALE_STEP", "value": step.name},
        {"name": "AGENTSCALE_MODEL", "value": step.model or ""},
        {"name": "AGENTSCALE_TRITON_HOST", "value": L.child_name(wf, step.model) if step.model else ""},
        {"name": "AGENTSCALE_TRITON_GRPC_PORT", "value": "8001"},
        {"name": "AGENTSCALE_CONCURRENCY", "value": str(step.concurrency)},
        {"name": "AGENTSCALE_BATCH_MAX_SIZE", "value": str(step.batch.maxSize)},
        {"name": "AGENTSCALE_BATCH_MAX_WAIT_MS", "value": str(step.batch.maxWaitMs)},
        {"name": "AGENTSCALE_LOAD_BALANCING", "value": step.loadBalancing.value},
        {"name": "AGENTSCALE_MAX_DELIVERIES", "value": str(step.maxDeliveries)},
    ]
    env += result_cache_env(wf, step)
    # User env last, so a user can override a default on purpose.
    env += [e.model_dump(exclude_none=True) for e in step.env]
    return env


def result_cache_version(wf: AgentWorkflow, step: Step) -> str:
    """What a cached output of ``step`` depends on besides its input, hashed into every cache key: the
    spec's ``resultCache.version``, what the step runs (image, command, arguments, environment) and what its
    model server runs (image, repository, backend, parameters). Changing any of them starts a fresh cache;
    scaling, resources and placement do not."""
    assert step.resultCache is not None
    parts: dict[str, Any] = {
        "version": step.resultCache.version,
        "step": step.model_dump(mode="json", include={"name", "image", "command", "args", "env", "model"}),
    }
    model = next((m for m in wf.spec.models if m.name == step.model), None)
    if model is not None:
        parts["model"] = model.model_dump(
            mode="json", include={"name", "image", "modelRepository", "backend", "parameters"}
        )
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def result_cache_env(wf: AgentWorkflow, step: Step) -> list[dict[str, Any]]:
    """The step's result cache settings for the worker (``agentscale_worker.step_cache``); none when off."""
    cache = step.resultCache
    if cache is None or not cache.enabled:
        return []
    return [
        {"name": "AGENTSCALE_RESULT_CACHE_TTL_S", "value": str(cache.ttlSeconds)},
        {"name": "AGENTSCALE_RESULT_CACHE_MAX_ENTRIES", "value": str(cache.maxEntries)},
        {"name": "AGENTSCALE_RESULT_CACHE_MAX_ENTRY_BYTES", "value": str(cache.maxEntryBytes)},
        {"name": "AGENTSCALE_RESULT_CACHE_VERSION", "value": result_cache_version(wf, step)},
    ]


def _probes(ready_port: str, ready_path: str, timeout: int) -> dict[str, Any]:
    """Readiness where the process says it can serve; liveness on the metrics server (event loop alive)."""
    return {
        "readinessProbe": pods.probe({"httpGet": {"path": ready_path, "port": ready_port}}, 5, 3, timeout),
        "livenessProbe": pods.probe({"httpGet": {"path": "/healthz", "port": "metrics"}}, 10, 6, timeout),
    }


def _pod_template(
    wf: AgentWorkflow,
    component: str,
    part: str | None,
    container: dict[str, Any],
    gpu: Any,
    grace: int,
    annotations: dict[str, str],
    tmp_size_limit: str | int,
    own_placement: Placement | None,
) -> dict[str, Any]:
    selector = L.selector_labels(wf, component, part)
    pod_spec: dict[str, Any] = {
        **pods.identity(wf),
        "securityContext": dict(pods.POD_SECURITY),
        "terminationGracePeriodSeconds": grace,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [pods.empty_dir("tmp", tmp_size_limit)],
        **pods.placement(gpu, selector, wf.spec.placement, own_placement),
    }
    if wf.spec.priorityClassName:
        pod_spec["priorityClassName"] = wf.spec.priorityClassName
    return {
        "metadata": {
            "labels": L.labels(wf, component, part),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
                **annotations,
            },
        },
        "spec": pod_spec,
    }


def _deployment(
    wf: AgentWorkflow,
    name: str,
    component: str,
    part: str | None,
    replicas: int | None,
    template: dict[str, Any],
    gpu: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": L.selector_labels(wf, component, part)},
        "revisionHistoryLimit": 3,
        "strategy": pods.strategy(gpu),
        "template": template,
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": wf.namespace, "labels": L.labels(wf, component, part)},
        "spec": spec,
    }


def step_deployment(wf: AgentWorkflow, step: Step) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": step.image,
        "imagePullPolicy": "IfNotPresent",
        "env": step_env(wf, step),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": pods.resources(
            step.resources, step.gpu, WORKER_DEFAULT_REQUESTS, WORKER_DEFAULT_MEMORY_LIMIT
        ),
        "securityContext": dict(pods.CONTAINER_SECURITY),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        # Ready while the worker reaches Redis (its metrics server answers /readyz from the connection).
        **_probes("metrics", "/readyz", step.probeTimeoutSeconds),
    }
    if step.command:
        container["command"] = list(step.command)
    else:
        container["command"] = ["agentscale-worker", "step"]
    if step.args:
        container["args"] = list(step.args)
    template = _pod_template(
        wf,
        L.STEP,
        step.name,
        container,
        step.gpu,
        60,
        step.podAnnotations,
        step.tmpSizeLimit,
        step.placement,
    )
    return _deployment(
        wf,
        L.child_name(wf, step.name),
        L.STEP,
        step.name,
        step.scaling.rendered_replicas(),
        template,
        step.gpu,
    )


def gateway_env(wf: AgentWorkflow) -> list[dict[str, Any]]:
    gw = wf.spec.gateway
    env = common_env(wf)
    if gw.validator:
        env.append({"name": "AGENTSCALE_VALIDATOR", "value": gw.validator})
    if gw.tokens_secret(wf.name):
        env.append({"name": "AGENTSCALE_GATEWAY_TOKENS_DIR", "value": TOKENS_DIR})
    if gw.maxBodyBytes is not None:
        env.append({"name": "AGENTSCALE_GATEWAY_MAX_BODY_BYTES", "value": str(gw.maxBodyBytes)})
    return env


def gateway_deployment(wf: AgentWorkflow) -> dict[str, Any]:
    gw = wf.spec.gateway
    secret = gw.tokens_secret(wf.name)
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if secret:
        mounts.append({"name": TOKENS_VOLUME, "mountPath": TOKENS_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": "gateway",
        "image": gw.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["agentscale-worker", "gateway"],
        "env": gateway_env(wf),
        "ports": [
            {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": pods.resources(gw.resources, None, WORKER_DEFAULT_REQUESTS, WORKER_DEFAULT_MEMORY_LIMIT),
        "securityContext": dict(pods.CONTAINER_SECURITY),
        "volumeMounts": mounts,
        **_probes("http", "/readyz", gw.probeTimeoutSeconds),
    }
    template = _pod_template(
        wf, L.GATEWAY, None, container, None, 30, gw.podAnnotations, gw.tmpSizeLimit, gw.placement
    )
    if secret:
        template["spec"]["volumes"].append(
            {"name": TOKENS_VOLUME, "secret": {"secretName": secret, "defaultMode": TOKENS_MODE}}
        )
    return _deployment(wf, L.child_name(wf, "gateway"), L.GATEWAY, None, gw.replicas, template, None)


def gateway_service(wf: AgentWorkflow) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": L.child_name(wf, "gateway"),
            "namespace": wf.namespace,
            "labels": L.labels(wf, L.GATEWAY),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": L.selector_labels(wf, L.GATEWAY),
            "ports": [
                {"name": "http", "port": GATEWAY_PORT, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }
