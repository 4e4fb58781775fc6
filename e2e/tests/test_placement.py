"""Placement on a real API server and scheduler: pods land where the workflow's placement says.

The local cluster's GPU nodes carry the ``nvidia.com/gpu`` NoSchedule taint, so a workflow without GPUs
lands there only when its placement tolerates that taint, and picks among them by node label. The test reads
the nodes from the cluster (a pool label shared by two or more tainted nodes), so it needs no fixed names.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
from operator_support import condition, wait_condition, workflow

pytestmark = pytest.mark.cluster

POOL_LABEL = "agentscale.io/pool"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def tainted_pool(kubectl: Any) -> tuple[str, list[str]]:
    """A pool (its label value) of two or more nodes that all carry a NoSchedule taint, and their names."""
    pools: dict[str, list[str]] = defaultdict(list)
    for node in kubectl.json("get", "nodes")["items"]:
        pool = node["metadata"].get("labels", {}).get(POOL_LABEL)
        taints = node["spec"].get("taints") or []
        if pool and any(t.get("effect") == "NoSchedule" for t in taints):
            pools[pool].append(node["metadata"]["name"])
    pool, nodes = max(pools.items(), key=lambda kv: len(kv[1]), default=("", []))
    if len(nodes) < 2:
        pytest.skip(f"no pool ({POOL_LABEL}) of two tainted nodes in this cluster")
    return pool, sorted(nodes)


def pods_by_part(kubectl: Any, ns: str, wf: str) -> dict[str, list[dict[str, Any]]]:
    """The workflow's live pods, keyed by step or model name (the gateway's under 'gateway')."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    items = kubectl.json("-n", ns, "get", "pods", "-l", f"agentscale.io/workflow={wf}")["items"]
    for p in items:
        if p["metadata"].get("deletionTimestamp"):
            continue
        labels = p["metadata"]["labels"]
        part = labels.get("agentscale.io/step") or labels.get("agentscale.io/model") or "gateway"
        out[part].append(p)
    return out


def nodes_of(pods: list[dict[str, Any]]) -> set[str]:
    return {p["spec"].get("nodeName") or "" for p in pods}


def placed(pool: str, pinned: str) -> dict[str, Any]:
    """Every pod in ``pool`` (tolerating its taint); step b, by its own placement, on node ``pinned``."""
    doc = workflow(
        "placed",
        [
            {"name": "a", "model": "m", "next": ["b"]},
            {"name": "b", "placement": {"nodeSelector": {"kubernetes.io/hostname": pinned}}},
        ],
        [{"name": "m", "modelRepository": "/models"}],
    )
    doc["spec"]["placement"] = {"nodeSelector": {POOL_LABEL: pool}, "tolerations": [GPU_TAINT]}
    return doc


def test_pods_land_on_the_nodes_placement_names_and_follow_a_change(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    pool, nodes = tainted_pool(kubectl)
    first, second = nodes[0], nodes[1]
    kubectl.apply(placed(pool, first), namespace=namespace)
    wait_condition(kubectl, wait_for, namespace, "placed", "Ready", "True")

    parts = pods_by_part(kubectl, namespace, "placed")
    assert set(parts) == {"a", "b", "m", "gateway"}, parts.keys()
    for part, pods in parts.items():
        assert nodes_of(pods) <= set(nodes), (part, nodes_of(pods), nodes)
        spec = pods[0]["spec"]
        assert spec["nodeSelector"][POOL_LABEL] == pool, (part, spec["nodeSelector"])
        assert GPU_TAINT in spec["tolerations"], (part, spec["tolerations"])
    assert nodes_of(parts["b"]) == {first}

    # The part's own placement changes: its pods roll onto the other node; the rest stay where they were.
    others = {part: {p["metadata"]["name"] for p in pods} for part, pods in parts.items() if part != "b"}
    kubectl.apply(placed(pool, second), namespace=namespace)

    def moved() -> bool:
        pods = pods_by_part(kubectl, namespace, "placed")["b"]
        return (
            bool(pods)
            and nodes_of(pods) == {second}
            and all(p["status"].get("phase") == "Running" for p in pods)
        )

    wait_for(moved, timeout=90, interval=1, message=f"step b's pods on {second}")
    after = pods_by_part(kubectl, namespace, "placed")
    assert {
        part: {p["metadata"]["name"] for p in pods} for part, pods in after.items() if part != "b"
    } == others


def test_without_the_toleration_the_pods_wait_and_status_says_why(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    pool, _ = tainted_pool(kubectl)
    doc = workflow("untolerated", [{"name": "a"}])
    doc["spec"]["placement"] = {"nodeSelector": {POOL_LABEL: pool}}
    kubectl.apply(doc, namespace=namespace)
    wf = wait_condition(kubectl, wait_for, namespace, "untolerated", "Unschedulable", "True")
    assert condition(wf, "Ready")["status"] == "False"
    pods = pods_by_part(kubectl, namespace, "untolerated")["a"]
    assert pods and all(not p["spec"].get("nodeName") for p in pods), nodes_of(pods)
    assert "untolerated taint" in condition(wf, "Unschedulable")["message"], condition(wf, "Unschedulable")

    # Tolerating the taint lets the same pods schedule.
    doc["spec"]["placement"]["tolerations"] = [GPU_TAINT]
    kubectl.apply(doc, namespace=namespace)
    wait_condition(kubectl, wait_for, namespace, "untolerated", "Ready", "True")


def test_a_gpu_product_contradicted_by_the_selector_is_invalid_spec(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    model = {
        "name": "m",
        "modelRepository": "/models",
        "gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"},
    }
    doc = workflow("contradicted", [{"name": "a", "model": "m"}], [model])
    doc["spec"]["placement"] = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}
    kubectl.apply(doc, namespace=namespace)
    wf = wait_condition(kubectl, wait_for, namespace, "contradicted", "Degraded", "True")
    deg = condition(wf, "Degraded")
    assert deg["reason"] == "InvalidSpec", deg
    assert "spec.models[m]: gpu.product 'NVIDIA-H100-80GB-HBM3'" in deg["message"], deg
    assert "spec.placement.nodeSelector[nvidia.com/gpu.product]" in deg["message"], deg


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ({"nodeSelector": {"bad key": "x"}}, "every key must be a label key"),
        ({"nodeSelector": {"k": "bad value"}}, "must be a label value"),
        ({"tolerations": [{"operator": "Equal", "value": "v"}]}, "an empty key needs operator Exists"),
        (
            {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            "operator Exists takes no value",
        ),
        ({"tolerations": [{"key": "k", "tolerationSeconds": 5}]}, "effect NoExecute only"),
        ({"tolerations": [{"key": "k", "effect": "NoRun"}]}, "Unsupported value"),
    ],
    ids=["selector-key", "selector-value", "empty-key", "exists-value", "seconds-effect", "effect"],
)
def test_api_server_refuses_bad_placement(
    kubectl: Any, crd: None, namespace: str, placement: dict[str, Any], message: str
) -> None:
    doc = workflow("badplace", [{"name": "a"}])
    doc["spec"]["placement"] = placement
    proc = kubectl.run("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(doc))
    assert proc.returncode != 0, "accepted"
    assert "spec.placement" in proc.stderr and message in proc.stderr, proc.stderr
