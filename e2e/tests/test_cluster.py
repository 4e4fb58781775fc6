"""The local cluster behaves like a GPU cluster: fake GPU pool, real scheduling, real HPA.

Runs against whatever cluster the kubeconfig names (kwok from e2e/cluster/up.sh, or kind from
e2e/cluster/kind/up.sh). Asserts behaviour only; every wait is bounded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

POOL_LABEL = "agentscale.io/pool"  # set by nodes.yaml (kwok) and by kind/up.sh (kind)
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# Never pulled on kwok nodes; on kind it must be pullable or preloaded.
IMAGE = os.environ.get("AGENTSCALE_E2E_IMAGE", "registry.k8s.io/pause:3.10")


@dataclass(frozen=True)
class Pool:
    """Node names per pool, found by label so the same tests run on kwok and kind."""

    h100: frozenset[str]
    mig: frozenset[str]
    cpu: frozenset[str]
    kwok: bool  # nodes are kwok fakes (pod usage is simulated from annotations)

    @property
    def gpu(self) -> frozenset[str]:
        return self.h100 | self.mig


@pytest.fixture(scope="module")
def pool(kubectl) -> Pool:
    nodes = kubectl.json("get", "nodes")["items"]

    def named(value: str) -> frozenset[str]:
        return frozenset(
            n["metadata"]["name"] for n in nodes if n["metadata"].get("labels", {}).get(POOL_LABEL) == value
        )

    kwok = any(n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake" for n in nodes)
    return Pool(h100=named("gpu-h100"), mig=named("gpu-mig"), cpu=named("cpu"), kwok=kwok)


def pod(
    name: str,
    *,
    limits: dict[str, str] | None = None,
    tolerate_gpu: bool = False,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": "10m", "memory": "16Mi"}}
    if limits:
        resources["limits"] = limits
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": IMAGE, "resources": resources}],
        "terminationGracePeriodSeconds": 0,
    }
    if tolerate_gpu:
        spec["tolerations"] = [GPU_TOLERATION]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def get_pod(kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.json("-n", namespace, "get", "pod", name)


def running_pod(kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    obj = get_pod(kubectl, namespace, name)
    return obj if obj["status"].get("phase") == "Running" else None


def unschedulable_message(kubectl, namespace: str, name: str) -> str | None:
    """The PodScheduled=False message once the scheduler has given up on the pod, else None."""
    obj = get_pod(kubectl, namespace, name)
    for cond in obj["status"].get("conditions", []):
        if cond["type"] == "PodScheduled" and cond["status"] == "False" and cond.get("message"):
            return str(cond["message"])
    return None


def test_gpu_pool_is_present(kubectl, pool):
    assert len(pool.h100) == 2, pool
    assert len(pool.mig) == 1, pool
    assert len(pool.cpu) == 2, pool
    nodes = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}

    for name in pool.gpu | pool.cpu:
        conditions = {c["type"]: c["status"] for c in nodes[name]["status"]["conditions"]}
        assert conditions.get("Ready") == "True", (name, conditions)

    for name in pool.h100:
        node = nodes[name]
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert labels["nvidia.com/gpu.count"] == "8"
        assert labels["nvidia.com/gpu.present"] == "true"
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert GPU_TAINT in node["spec"]["taints"]

    (mig_name,) = pool.mig
    mig = nodes[mig_name]
    assert mig["metadata"]["labels"]["nvidia.com/mig.strategy"] == "mixed"
    assert mig["metadata"]["labels"]["nvidia.com/gpu.product"].startswith("NVIDIA-A100")
    assert mig["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] == "7"
    assert GPU_TAINT in mig["spec"]["taints"]

    for name in pool.cpu:
        node = nodes[name]
        assert "nvidia.com/gpu" not in node["status"]["allocatable"]
        assert not node["spec"].get("taints")
        assert int(node["status"]["allocatable"]["pods"]) >= 100


def test_gpu_pod_binds_to_gpu_node_and_runs(kubectl, namespace, wait_for, pool):
    kubectl.apply(pod("one-gpu", limits={"nvidia.com/gpu": "1"}, tolerate_gpu=True), namespace=namespace)
    obj = wait_for(lambda: running_pod(kubectl, namespace, "one-gpu"), timeout=60, message="one-gpu Running")
    assert obj["spec"]["nodeName"] in pool.h100


def test_pod_asking_for_more_gpus_than_a_node_has_stays_pending(kubectl, namespace, wait_for):
    kubectl.apply(pod("nine-gpus", limits={"nvidia.com/gpu": "9"}, tolerate_gpu=True), namespace=namespace)
    message = wait_for(
        lambda: unschedulable_message(kubectl, namespace, "nine-gpus"),
        timeout=60,
        message="nine-gpus reported unschedulable",
    )
    assert "Insufficient nvidia.com/gpu" in message
    obj = get_pod(kubectl, namespace, "nine-gpus")
    assert obj["status"]["phase"] == "Pending"
    assert not obj["spec"].get("nodeName")
    events = kubectl.json(
        "-n", namespace, "get", "events", "--field-selector", "involvedObject.name=nine-gpus"
    )["items"]
    assert any("Insufficient nvidia.com/gpu" in e.get("message", "") for e in events), events


def test_pods_without_toleration_never_land_on_gpu_nodes(kubectl, namespace, wait_for, pool):
    names = [f"cpu-only-{i}" for i in range(8)]
    kubectl.apply(*(pod(n) for n in names), namespace=namespace)
    for name in names:
        obj = wait_for(
            lambda n=name: running_pod(kubectl, namespace, n), timeout=60, message=f"{name} Running"
        )
        assert obj["spec"]["nodeName"] not in pool.gpu, (name, obj["spec"]["nodeName"])

    # Even when asked for a GPU node by label, the taint keeps it off.
    wants_gpu_node = pod("wants-gpu-node", node_selector={"nvidia.com/gpu.present": "true"})
    kubectl.apply(wants_gpu_node, namespace=namespace)
    message = wait_for(
        lambda: unschedulable_message(kubectl, namespace, "wants-gpu-node"),
        timeout=60,
        message="wants-gpu-node reported unschedulable",
    )
    assert "untolerated taint" in message
    assert not get_pod(kubectl, namespace, "wants-gpu-node")["spec"].get("nodeName")


def test_mig_pod_lands_on_mig_node(kubectl, namespace, wait_for, pool):
    mig_slice = pod("mig-slice", limits={"nvidia.com/mig-1g.10gb": "1"}, tolerate_gpu=True)
    kubectl.apply(mig_slice, namespace=namespace)
    obj = wait_for(
        lambda: running_pod(kubectl, namespace, "mig-slice"), timeout=60, message="mig-slice Running"
    )
    assert obj["spec"]["nodeName"] in pool.mig


def parse_cpu_millis(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(m?)", quantity)
    assert match, quantity
    return int(match.group(1)) * (1 if match.group(2) else 1000)


def test_hpa_scales_deployment_on_simulated_cpu_usage(kubectl, namespace, wait_for, pool):
    if not pool.kwok:
        pytest.skip("pod usage is simulated from annotations only on kwok nodes")
    labels = {"app": "busy"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "busy"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    # kwok reports these as the pod's usage; metrics-server serves them to the HPA.
                    "annotations": {"kwok.x-k8s.io/usage-cpu": "800m", "kwok.x-k8s.io/usage-memory": "64Mi"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": IMAGE,
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "busy"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "busy"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                }
            ],
        },
    }
    kubectl.apply(deployment, hpa, namespace=namespace)

    def top_usage() -> list[int]:
        out = kubectl("-n", namespace, "top", "pods", "--no-headers")
        return [parse_cpu_millis(line.split()[1]) for line in out.splitlines() if line.strip()]

    # metrics-server needs two scrapes (15s resolution) before it has a CPU rate.
    usages = wait_for(top_usage, timeout=120, interval=3, message="kubectl top pods to report usage")
    assert all(700 <= u <= 900 for u in usages), usages

    def scaled_replicas() -> int | None:
        replicas = int(kubectl.json("-n", namespace, "get", "deployment", "busy")["spec"]["replicas"])
        return replicas if replicas > 1 else None

    replicas = wait_for(scaled_replicas, timeout=180, interval=3, message="the HPA to scale busy up")
    assert 1 < replicas <= 4
    status = kubectl.json("-n", namespace, "get", "hpa", "busy")["status"]
    current = status["currentMetrics"][0]["resource"]["current"]
    assert current["averageUtilization"] > 50, status
