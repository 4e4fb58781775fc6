"""What the workflow's pods run as and may reach: one ServiceAccount and the NetworkPolicies.

The ServiceAccount ``<workflow>-workflow`` holds no permissions and, unless ``spec.serviceAccount.
automountToken`` asks for one, no token is mounted into any pod. The NetworkPolicies:

- ``<workflow>-workflow`` selects every pod of the workflow. Ingress: from the workflow's own pods (any
  port), and to the metrics ports from ``spec.networkPolicy.metricsFrom`` (default: any pod of the cluster).
  Egress: DNS (port 53 anywhere), Redis (``redisPort`` to ``redisTo``, default anywhere), the workflow's model
  servers (HTTP and gRPC), and ``extraEgress``.
- ``<workflow>-gateway`` selects the gateway's pods and adds ingress to its HTTP port from ``gatewayFrom``
  (default: anywhere). NetworkPolicies add up, so the gateway is the only door into the workflow.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agentscale.api.models import AgentWorkflow
from agentscale.render import labels as L
from agentscale.render import triton, workers
from agentscale.render.pods import service_account_name

__all__ = ["network_policies", "redis_port", "service_account"]

DEFAULT_REDIS_PORT = 6379
DNS_PORT = 53


def service_account(wf: AgentWorkflow) -> dict[str, Any] | None:
    """The workflow's own ServiceAccount; None when the spec names an existing one."""
    if wf.spec.serviceAccount.name:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": service_account_name(wf),
            "namespace": wf.namespace,
            "labels": L.labels(wf, L.WORKFLOW),
        },
        "automountServiceAccountToken": wf.spec.serviceAccount.automountToken,
    }


def redis_port(wf: AgentWorkflow) -> int:
    """The port the pods reach Redis on: set in the spec, else the URL's, else Redis' default."""
    np, url = wf.spec.networkPolicy, wf.spec.queue.redisUrl
    if np.redisPort is not None:
        return np.redisPort
    if url:
        try:
            port = urlsplit(url).port
        except ValueError:  # an out-of-range port: the worker fails to connect and says so
            port = None
        if port is not None:
            return port
    return DEFAULT_REDIS_PORT


def _tcp(*ports: int | str) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def _workflow_pods(wf: AgentWorkflow, component: str | None = None) -> dict[str, Any]:
    labels = {L.WORKFLOW_LABEL: wf.name}
    if component:
        labels[L.COMPONENT_LABEL] = component
    return {"podSelector": {"matchLabels": labels}}


def _policy(wf: AgentWorkflow, part: str, component: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": L.child_name(wf, part),
            "namespace": wf.namespace,
            "labels": L.labels(wf, component),
        },
        "spec": spec,
    }


def network_policies(wf: AgentWorkflow) -> list[dict[str, Any]]:
    """The workflow's NetworkPolicies (none when ``spec.networkPolicy.enabled`` is false)."""
    np = wf.spec.networkPolicy
    if not np.enabled:
        return []
    metrics_from = [dict(p) for p in np.metricsFrom] or [{"namespaceSelector": {}}]
    redis: dict[str, Any] = {"ports": _tcp(redis_port(wf))}
    if np.redisTo:
        redis["to"] = [dict(p) for p in np.redisTo]
    egress: list[dict[str, Any]] = [
        {"ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}]},
        redis,
    ]
    if wf.spec.models:
        egress.append(
            {"to": [_workflow_pods(wf, L.MODEL)], "ports": _tcp(triton.HTTP_PORT, triton.GRPC_PORT)}
        )
    egress += [dict(rule) for rule in np.extraEgress]
    out = [
        _policy(
            wf,
            L.WORKFLOW,
            L.WORKFLOW,
            {
                "podSelector": {"matchLabels": {L.WORKFLOW_LABEL: wf.name}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [_workflow_pods(wf)]},
                    {"from": metrics_from, "ports": _tcp(workers.METRICS_PORT, triton.METRICS_PORT)},
                ],
                "egress": egress,
            },
        )
    ]
    if wf.spec.gateway.enabled:
        gateway: dict[str, Any] = {"ports": _tcp(workers.GATEWAY_PORT)}
        if np.gatewayFrom:
            gateway["from"] = [dict(p) for p in np.gatewayFrom]
        out.append(
            _policy(
                wf,
                L.GATEWAY,
                L.GATEWAY,
                {
                    "podSelector": {"matchLabels": L.selector_labels(wf, L.GATEWAY)},
                    "policyTypes": ["Ingress"],
                    "ingress": [gateway],
                },
            )
        )
    return out
