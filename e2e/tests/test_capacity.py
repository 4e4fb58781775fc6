"""Scheduling shortages other than GPUs, named in status; quantities the API server refuses.

One workflow whose step requests more CPU than any node it may use can offer stays Pending: status says
Unschedulable with reason InsufficientCPU, the request and the scheduler's own words, Ready is False for the
same reason, GPUCapacityShort stays False, and asking for what fits clears it. Node capacities are read from
the cluster (the local cluster's CPU nodes have 32 cores, its GPU nodes 64 behind a taint), so this runs
anywhere.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from agentscale.api.models import parse_quantity
from operator_support import condition, wait_condition, workflow

pytestmark = pytest.mark.cluster


def more_cpu_than_any_usable_node(kubectl: Any) -> int:
    """Whole cores one pod may not get: more than the allocatable CPU of every node without a NoSchedule or
    NoExecute taint (the pods of a step without GPUs tolerate none)."""
    most = 0.0
    for node in kubectl.json("get", "nodes")["items"]:
        taints = node["spec"].get("taints") or []
        if any(t.get("effect") in ("NoSchedule", "NoExecute") for t in taints):
            continue
        cpu = parse_quantity(node["status"].get("allocatable", {}).get("cpu", "0"))
        most = max(most, float(cpu or 0))
    assert most > 0, "no untainted node with CPU in this cluster"
    return math.floor(most) + 1


def scheduler_words(kubectl: Any, ns: str, step: str) -> list[str]:
    """The PodScheduled messages of the step's pending pods, without the preemption tail."""
    pods = kubectl.json("-n", ns, "get", "pods", "-l", f"agentscale.io/step={step}")["items"]
    return [
        " ".join(c.get("message", "").split()).split(" preemption:")[0]
        for p in pods
        if p["status"].get("phase") == "Pending"
        for c in p["status"].get("conditions") or []
        if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
    ]


def test_cpu_shortage_is_named_with_the_schedulers_words_and_clears(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    cores = more_cpu_than_any_usable_node(kubectl)
    step = {"name": "big", "resources": {"requests": {"cpu": str(cores)}}}
    kubectl.apply(workflow("hungry", [step]), namespace=namespace)

    wf = wait_condition(kubectl, wait_for, namespace, "hungry", "Unschedulable", "True")
    un = condition(wf, "Unschedulable")
    assert un["reason"] == "InsufficientCPU", un
    text = un["message"]
    assert f"step/big x1 (requests cpu {cores}): not enough free CPU" in text, text
    assert "Insufficient cpu" in text and "nodes are available" in text, text
    assert "Add nodes" in text and "resources.requests.cpu" in text, text
    words = scheduler_words(kubectl, namespace, "big")
    assert words and any(w in text for w in words), (words, text)
    ready = condition(wf, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "InsufficientCPU", text)
    assert condition(wf, "GPUCapacityShort")["status"] == "False"
    assert wf["status"]["steps"]["big"]["pending"] == 1

    # Ask for what fits: the shortage clears and the workflow becomes Ready.
    patch = [{"op": "replace", "path": "/spec/steps/0/resources/requests/cpu", "value": "100m"}]
    kubectl("-n", namespace, "patch", "agentworkflow", "hungry", "--type=json", "-p", json.dumps(patch))
    wf = wait_condition(kubectl, wait_for, namespace, "hungry", "Ready", "True", timeout=60)
    assert condition(wf, "Unschedulable")["status"] == "False"
    assert condition(wf, "GPUCapacityShort")["status"] == "False"
    assert wf["status"]["steps"]["big"] == {"desired": 1, "ready": 1, "pending": 0}


def test_cpu_shortage_posts_a_warning_event(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    cores = more_cpu_than_any_usable_node(kubectl)
    step = {"name": "big", "resources": {"requests": {"cpu": str(cores)}}}
    kubectl.apply(workflow("starved", [step]), namespace=namespace)

    def warned() -> bool:
        events = kubectl.json(
            "-n", namespace, "get", "events", "--field-selector", "involvedObject.name=starved"
        )["items"]
        return any(
            e["reason"] == "InsufficientCPU" and e["type"] == "Warning" and "Insufficient cpu" in e["message"]
            for e in events
        )

    wait_for(warned, timeout=45, interval=0.5, message="a Warning Event InsufficientCPU on the workflow")


BAD_QUANTITIES = [
    ("cpu-banana", {"requests": {"cpu": "banana"}}, "spec.steps[0].resources.requests[cpu]"),
    ("memory-unit", {"limits": {"memory": "1GB"}}, "spec.steps[0].resources.limits[memory]"),
    ("negative-cpu", {"requests": {"cpu": -1}}, "spec.steps[0].resources.requests[cpu]"),
]


@pytest.mark.parametrize(("case", "resources", "field"), BAD_QUANTITIES, ids=[b[0] for b in BAD_QUANTITIES])
def test_api_server_rejects_what_is_not_a_quantity(
    kubectl: Any, crd: None, namespace: str, case: str, resources: dict[str, Any], field: str
) -> None:
    doc = workflow(case, [{"name": "a", "resources": resources}])
    proc = kubectl.run("-n", namespace, "apply", "-f", "-", input=json.dumps(doc))
    assert proc.returncode != 0, f"{case} was accepted"
    assert field in proc.stderr, proc.stderr
    assert kubectl.run("-n", namespace, "get", "agentworkflow", case).returncode != 0


def test_api_server_accepts_kubernetes_quantities(kubectl: Any, crd: None, namespace: str) -> None:
    resources = {
        "requests": {"cpu": "500m", "memory": 1073741824, "ephemeral-storage": "1.5Gi"},
        "limits": {"cpu": 2, "memory": "2e9", "hugepages-2Mi": "0"},
    }
    doc = workflow("quantities", [{"name": "a", "resources": resources}])
    proc = kubectl.run("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(doc))
    assert proc.returncode == 0, proc.stderr
