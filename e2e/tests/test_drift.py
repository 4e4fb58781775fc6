"""Hand edits of fields the operator owns are put back; fields other writers own are left alone.

The four edits users make by hand most often (``kubectl set image``, ``kubectl scale`` of a fixed-mode step,
a removed label, an edited ``config.pbtxt``), each on a real API server. The idle-minute test in
test_operator.py checks the other side: nothing drifted, nothing written.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_support import get_wf, wait_condition, workflow

pytestmark = pytest.mark.cluster

STEPS = [
    {"name": "a", "model": "m", "next": ["b"]},
    {"name": "b", "scaling": {"replicas": 2}, "next": ["q"]},
    {"name": "q", "scaling": {"mode": "queue", "minReplicas": 1, "maxReplicas": 5}},
]
MODELS = [{"name": "m", "modelRepository": "/models", "maxBatchSize": 8}]


@pytest.fixture
def drifty(kubectl: Any, operator: Any, namespace: str, wait_for: Any) -> str:
    kubectl.apply(workflow("drifty", STEPS, MODELS), namespace=namespace)
    wait_condition(kubectl, wait_for, namespace, "drifty", "Ready", "True")
    return namespace


def deployment(kubectl: Any, ns: str, name: str) -> dict[str, Any]:
    return kubectl.json("-n", ns, "get", "deployment", name)


def drift_events(kubectl: Any, ns: str) -> list[str]:
    items = kubectl.json("-n", ns, "get", "events", "--field-selector", "involvedObject.name=drifty")["items"]
    return [e["message"] for e in items if e["reason"] == "DriftCorrected"]


def test_set_image_is_reverted(kubectl: Any, drifty: str, wait_for: Any) -> None:
    ns = drifty
    image = deployment(kubectl, ns, "drifty-a")["spec"]["template"]["spec"]["containers"][0]["image"]
    kubectl("-n", ns, "set", "image", "deployment/drifty-a", "worker=example.invalid/evil:1")

    def restored() -> bool:
        c = deployment(kubectl, ns, "drifty-a")["spec"]["template"]["spec"]["containers"][0]
        return bool(c["image"] == image)

    wait_for(restored, timeout=60, interval=1, message="drifty-a's image put back")
    msgs = wait_for(lambda: drift_events(kubectl, ns), timeout=30, message="a DriftCorrected Event")
    assert any("Deployment/drifty-a" in m and "image" in m for m in msgs), msgs


def test_scale_of_fixed_step_is_reverted_but_controller_owned_replicas_are_not(
    kubectl: Any, drifty: str, wait_for: Any
) -> None:
    ns = drifty
    # q's replicas belong to the resource controller (mode queue): a write there within bounds stays.
    kubectl("-n", ns, "scale", "deployment/drifty-q", "--replicas=3")
    kubectl("-n", ns, "scale", "deployment/drifty-b", "--replicas=5")
    wait_for(
        lambda: deployment(kubectl, ns, "drifty-b")["spec"]["replicas"] == 2,
        timeout=60,
        interval=1,
        message="drifty-b back to its fixed 2 replicas",
    )
    assert deployment(kubectl, ns, "drifty-q")["spec"]["replicas"] == 3
    msgs = wait_for(lambda: drift_events(kubectl, ns), timeout=30, message="a DriftCorrected Event")
    assert any("Deployment/drifty-b" in m and "spec.replicas" in m for m in msgs), msgs
    assert not any("drifty-q" in m for m in msgs), msgs


def test_removed_labels_are_put_back(kubectl: Any, drifty: str, wait_for: Any) -> None:
    ns = drifty
    kubectl("-n", ns, "label", "deployment/drifty-a", "app.kubernetes.io/part-of-")
    # Removing the workflow label takes the Service out of the operator's watch (a DELETED event for it).
    kubectl("-n", ns, "label", "service/drifty-m", "agentscale.io/workflow-")

    def labels(kind: str, name: str) -> dict[str, str]:
        return dict(kubectl.json("-n", ns, "get", kind, name)["metadata"].get("labels") or {})

    wait_for(
        lambda: labels("deployment", "drifty-a").get("app.kubernetes.io/part-of") == "agentscale",
        timeout=60,
        interval=1,
        message="part-of label back on drifty-a",
    )
    wait_for(
        lambda: labels("service", "drifty-m").get("agentscale.io/workflow") == "drifty",
        timeout=60,
        interval=1,
        message="workflow label back on service drifty-m",
    )


def test_edited_model_config_is_put_back(kubectl: Any, drifty: str, wait_for: Any) -> None:
    ns = drifty
    cms = kubectl.json("-n", ns, "get", "configmaps", "-l", "agentscale.io/workflow=drifty")["items"]
    assert len(cms) == 1, [c["metadata"]["name"] for c in cms]
    name, data = cms[0]["metadata"]["name"], cms[0]["data"]
    assert "max_batch_size: 8" in data["config.pbtxt"]
    patch = {"data": {"config.pbtxt": data["config.pbtxt"].replace("max_batch_size: 8", "max_batch_size: 1")}}
    kubectl("-n", ns, "patch", "configmap", name, "--type=merge", "-p", json.dumps(patch))
    wait_for(
        lambda: kubectl.json("-n", ns, "get", "configmap", name)["data"] == data,
        timeout=60,
        interval=1,
        message="config.pbtxt put back",
    )
    wait_condition(kubectl, wait_for, ns, "drifty", "Ready", "True")
    assert get_wf(kubectl, ns, "drifty")["status"]["observedGeneration"] == 1
