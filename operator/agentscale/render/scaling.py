"""HorizontalPodAutoscalers and PodDisruptionBudgets."""

from __future__ import annotations

from typing import Any

from agentscale.api.models import AgentWorkflow, Scaling
from agentscale.render import labels as L


def hpa(wf: AgentWorkflow, component: str, part: str, scaling: Scaling) -> dict[str, Any] | None:
    """An autoscaling/v2 HPA on CPU utilization for mode hpa; None for every other mode."""
    if not scaling.hpa_owns_replicas():
        return None
    name = L.child_name(wf, part)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": wf.namespace, "labels": L.labels(wf, component, part)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.bounds()[0],
            "maxReplicas": scaling.bounds()[1],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": scaling.targetCPUUtilization},
                    },
                }
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": scaling.scaleDownStabilizationSeconds,
                    "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
                },
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [
                        {"type": "Percent", "value": 100, "periodSeconds": 15},
                        {"type": "Pods", "value": 4, "periodSeconds": 15},
                    ],
                    "selectPolicy": "Max",
                },
            },
        },
    }


def pdb(wf: AgentWorkflow, component: str, part: str, scaling: Scaling) -> dict[str, Any] | None:
    """Allow one voluntary disruption at a time for anything that can run more than one replica."""
    if scaling.bounds()[1] <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": L.child_name(wf, part),
            "namespace": wf.namespace,
            "labels": L.labels(wf, component, part),
        },
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": L.selector_labels(wf, component, part)},
        },
    }
