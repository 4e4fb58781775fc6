"""The operator against a real API server: examples, GPU placement, updates, bad input, restarts, HPA.

Runs on whatever cluster the kubeconfig names (the local kwok cluster in CI; kind works too). The operator is
a local process (``agentscale run --standalone``); containers never execute on kwok nodes.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
import yaml
from incluster import InClusterOperator
from operator_support import (
    EXAMPLES,
    OWNED_KINDS,
    WRITTEN,
    condition,
    get_wf,
    wait_condition,
    workflow,
    write_requests,
)

pytestmark = pytest.mark.cluster


def children(kubectl: Any, ns: str, wf: str) -> list[dict[str, Any]]:
    items = kubectl.json(
        "-n", ns, "get", OWNED_KINDS, "-l", f"agentscale.io/workflow={wf}", "--show-managed-fields"
    )["items"]
    return items


def node_kinds(kubectl: Any) -> dict[str, bool]:
    """node name -> whether it offers GPUs (whole or MIG)."""
    out = {}
    for n in kubectl.json("get", "nodes")["items"]:
        cap = n["status"].get("capacity", {})
        out[n["metadata"]["name"]] = any(k.startswith("nvidia.com/") for k in cap)
    return out


# --- examples


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_converges_with_gpu_pods_on_gpu_nodes(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any, path: Any
) -> None:
    doc = yaml.safe_load(path.read_text())
    name = doc["metadata"]["name"]
    kubectl("-n", namespace, "apply", "-f", str(path))
    wf = wait_condition(kubectl, wait_for, namespace, name, "Ready", "True", timeout=180)

    uid = wf["metadata"]["uid"]
    kids = children(kubectl, namespace, name)
    assert kids, "no children"
    for obj in kids:
        refs = obj["metadata"].get("ownerReferences") or []
        assert [r["uid"] for r in refs] == [uid], f"{obj['kind']}/{obj['metadata']['name']} not owned"
        managers = {
            m["manager"] for m in obj["metadata"].get("managedFields") or [] if m["operation"] == "Apply"
        }
        assert "agentscale" in managers

    steps = {s["name"] for s in doc["spec"]["steps"]}
    models = {m["name"] for m in doc["spec"]["models"]}
    st = wf["status"]
    assert set(st["steps"]) == steps and set(st["models"]) == models
    assert st["stepsReady"] == f"{len(steps)}/{len(steps)}"
    assert st["gpus"] > 0

    gpu_nodes = node_kinds(kubectl)
    pods = kubectl.json("-n", namespace, "get", "pods", "-l", f"agentscale.io/workflow={name}")["items"]
    assert pods
    for pod in pods:
        limits = {}
        for c in pod["spec"]["containers"]:
            limits.update(c.get("resources", {}).get("limits") or {})
        wants_gpu = any(k.startswith("nvidia.com/") for k in limits)
        node = pod["spec"]["nodeName"]
        assert gpu_nodes[node] == wants_gpu, f"{pod['metadata']['name']} (gpu={wants_gpu}) ran on {node}"

    # What the API server stored (defaults, omitted empty values, canonical quantities) is not drift.
    events = kubectl.json("-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={name}")
    drift = [e["message"] for e in events["items"] if e["reason"] in ("DriftCorrected", "DriftPersists")]
    assert drift == [], drift


# --- GPU shortage


def test_gpu_shortage_is_reported_with_numbers(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    big = {
        "name": "huge",
        "modelRepository": "/models",
        "gpu": {"count": 8, "product": "NVIDIA-H100-80GB-HBM3"},
        "scaling": {"mode": "fixed", "replicas": 5, "maxReplicas": 5},
    }
    kubectl.apply(workflow("greedy", [{"name": "s", "model": "huge"}], [big]), namespace=namespace)
    wf = wait_condition(kubectl, wait_for, namespace, "greedy", "GPUCapacityShort", "True", timeout=120)
    msg = condition(wf, "GPUCapacityShort")["message"]
    assert "cannot be scheduled for lack of GPUs" in msg
    assert "model/huge" in msg and "8 nvidia.com/gpu each" in msg
    assert "Insufficient nvidia.com/gpu" in msg
    assert condition(wf, "Ready")["status"] == "False"
    # The pool has 16 GPUs: at most 2 pods of 8 fit, so 3 stay Pending (status counts them as they appear).
    wait_for(
        lambda: get_wf(kubectl, namespace, "greedy")["status"]["models"]["huge"]["pending"] >= 3,
        timeout=60,
        message="status to count 3 pending pods of model huge",
    )

    def warned() -> bool:
        events = kubectl.json(
            "-n", namespace, "get", "events", "--field-selector", "involvedObject.name=greedy"
        )
        return any(e["reason"] == "InsufficientGPU" and e["type"] == "Warning" for e in events["items"])

    wait_for(warned, timeout=30, message="a Warning Event InsufficientGPU on the workflow")
    pending = [
        p
        for p in kubectl.json("-n", namespace, "get", "pods", "-l", "agentscale.io/model=huge")["items"]
        if p["status"]["phase"] == "Pending"
    ]
    assert pending and all(
        "Insufficient nvidia.com/gpu" in c.get("message", "")
        for p in pending
        for c in p["status"]["conditions"]
        if c["type"] == "PodScheduled"
    )

    # Ask for what fits: the shortage clears and the workflow becomes Ready.
    kubectl(
        "-n",
        namespace,
        "patch",
        "agentworkflow",
        "greedy",
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/spec/models/0/scaling/replicas", "value": 1}]),
    )
    wf = wait_condition(kubectl, wait_for, namespace, "greedy", "Ready", "True", timeout=120)
    assert condition(wf, "GPUCapacityShort")["status"] == "False"
    assert wf["status"]["models"]["huge"] == {"desired": 1, "ready": 1, "pending": 0}


# --- updates


def test_update_converges_prunes_and_delete_collects(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    wf = workflow("flow", [{"name": "a", "next": ["b"]}, {"name": "b", "scaling": {"replicas": 2}}])
    kubectl.apply(wf, namespace=namespace)
    wait_condition(kubectl, wait_for, namespace, "flow", "Ready", "True")
    assert kubectl.json("-n", namespace, "get", "pdb", "flow-b")  # two replicas -> a PDB

    # Change a's image, remove b, add c.
    wf2 = copy.deepcopy(wf)
    wf2["spec"]["steps"] = [{"name": "a", "image": "agentscale/worker:0.2.0", "next": ["c"]}, {"name": "c"}]
    kubectl.apply(wf2, namespace=namespace)

    def converged() -> bool:
        names = {(o["kind"], o["metadata"]["name"]) for o in children(kubectl, namespace, "flow")}
        dep_a = kubectl.json("-n", namespace, "get", "deployment", "flow-a")
        image = dep_a["spec"]["template"]["spec"]["containers"][0]["image"]
        return (
            ("Deployment", "flow-c") in names
            and ("Deployment", "flow-b") not in names
            and ("PodDisruptionBudget", "flow-b") not in names
            and image == "agentscale/worker:0.2.0"
        )

    wait_for(converged, timeout=90, message="children converge to the new spec")
    wait_condition(kubectl, wait_for, namespace, "flow", "Ready", "True")
    st = get_wf(kubectl, namespace, "flow")["status"]
    assert set(st["steps"]) == {"a", "c"}  # the removed step left status too

    kubectl("-n", namespace, "delete", "agentworkflow", "flow")
    wait_for(lambda: children(kubectl, namespace, "flow") == [], timeout=120, message="garbage collection")


def test_deleted_child_is_recreated(kubectl: Any, operator: Any, namespace: str, wait_for: Any) -> None:
    kubectl.apply(workflow("heal", [{"name": "a"}]), namespace=namespace)
    wait_condition(kubectl, wait_for, namespace, "heal", "Ready", "True")
    old_uid = kubectl.json("-n", namespace, "get", "deployment", "heal-a")["metadata"]["uid"]
    kubectl("-n", namespace, "delete", "deployment", "heal-a", "--wait=true")

    def recreated() -> bool:
        proc = kubectl.run("-n", namespace, "get", "deployment", "heal-a", "-o", "json")
        return proc.returncode == 0 and json.loads(proc.stdout)["metadata"]["uid"] != old_uid

    wait_for(recreated, timeout=60, message="heal-a recreated")


# --- bad input

BAD = [
    (
        "min-over-max",
        [{"name": "a", "scaling": {"mode": "hpa", "minReplicas": 5, "maxReplicas": 2}}],
        [],
        "minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "undefined-model",
        [{"name": "a", "model": "ghost"}],
        [],
        "spec.steps[].model must name an entry of spec.models",
    ),
    ("undefined-next", [{"name": "a", "next": ["ghost"]}], [], "spec.steps[].next must name steps defined"),
    ("duplicate-steps", [{"name": "a"}, {"name": "a"}], [], "Duplicate value"),
    ("bad-name", [{"name": "Not_A_Label"}], [], "spec.steps[0].name"),
    (
        "gpu-count-and-mig",
        [{"name": "a", "gpu": {"count": 1, "migProfile": "1g.10gb"}}],
        [],
        "set either count (whole GPUs) or migProfile (one MIG slice), not both",
    ),
    ("zero-concurrency", [{"name": "a", "concurrency": 0}], [], "spec.steps[0].concurrency"),
    ("self-loop", [{"name": "a", "next": ["a"]}], [], "a step cannot name itself in next"),
    (
        "step-model-clash",
        [{"name": "m", "model": "m"}],
        [{"name": "m", "modelRepository": "/models"}],
        "a step and a model cannot share a name",
    ),
    (
        "batching-without-batch",
        [{"name": "a", "model": "m"}],
        [{"name": "m", "modelRepository": "/models", "maxBatchSize": 0, "dynamicBatching": {}}],
        "dynamicBatching needs maxBatchSize > 0",
    ),
    (
        "object-store-repo",
        [{"name": "a", "model": "m"}],
        [{"name": "m", "modelRepository": "s3://bucket/models"}],
        "modelRepository",
    ),
]


@pytest.mark.parametrize(("case", "steps", "models", "message"), BAD, ids=[b[0] for b in BAD])
def test_api_server_rejects_bad_input(
    kubectl: Any, crd: None, namespace: str, case: str, steps: list[Any], models: list[Any], message: str
) -> None:
    proc = kubectl.run("-n", namespace, "apply", "-f", "-", input=json.dumps(workflow(case, steps, models)))
    assert proc.returncode != 0, f"{case} was accepted"
    assert message in proc.stderr, proc.stderr
    assert kubectl.run("-n", namespace, "get", "agentworkflow", case).returncode != 0


def test_cycle_is_degraded_and_others_still_reconcile(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    cyclic = workflow(
        "loop", [{"name": "a", "next": ["b"]}, {"name": "b", "next": ["c"]}, {"name": "c", "next": ["a"]}]
    )
    kubectl.apply(cyclic, namespace=namespace)
    kubectl.apply(workflow("fine", [{"name": "x"}]), namespace=namespace)
    wf = wait_condition(kubectl, wait_for, namespace, "loop", "Degraded", "True")
    deg = condition(wf, "Degraded")
    assert deg["reason"] == "InvalidSpec"
    assert "cycle" in deg["message"] and "a -> b -> c -> a" in deg["message"]
    assert children(kubectl, namespace, "loop") == []
    wait_condition(kubectl, wait_for, namespace, "fine", "Ready", "True")
    events = kubectl.json("-n", namespace, "get", "events", "--field-selector", "involvedObject.name=loop")[
        "items"
    ]
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events)

    # Fixing the spec recovers without a restart.
    cyclic["spec"]["steps"][2]["next"] = []
    kubectl.apply(cyclic, namespace=namespace)
    wait_condition(kubectl, wait_for, namespace, "loop", "Ready", "True")
    assert condition(get_wf(kubectl, namespace, "loop"), "Degraded")["status"] == "False"


# --- restarts


def test_restart_makes_no_duplicates_and_idle_operator_writes_nothing(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    for i in range(3):
        kubectl.apply(
            workflow(f"idle-{i}", [{"name": "a", "next": ["b"]}, {"name": "b", "scaling": {"replicas": 2}}]),
            namespace=namespace,
        )
    for i in range(3):
        wait_condition(kubectl, wait_for, namespace, f"idle-{i}", "Ready", "True")
    before = sorted(
        (o["kind"], o["metadata"]["name"], o["metadata"]["uid"]) for o in children_all(kubectl, namespace)
    )

    # Other tests' namespaces may still be terminating: their garbage collection writes would be counted.
    wait_for(
        lambda: (
            [
                n["metadata"]["name"]
                for n in kubectl.json("get", "namespaces", "-l", "agentscale.io/e2e=true")["items"]
                if n["metadata"]["name"] != namespace
            ]
            == []
        ),
        timeout=180,
        interval=2,
        message="other e2e namespaces to finish terminating",
    )
    operator.restart()
    # Let the restarted operator resume every workflow, then measure a quiet minute: no object the operator
    # writes in this namespace (children, the workflows and their status, Events) changes.
    time.sleep(10)
    start = write_requests(kubectl("get", "--raw", "/metrics"), WRITTEN)
    versions_before = written_versions(kubectl, namespace)
    time.sleep(60)
    end = write_requests(kubectl("get", "--raw", "/metrics"), WRITTEN)
    versions_after = written_versions(kubectl, namespace)
    after = sorted(
        (o["kind"], o["metadata"]["name"], o["metadata"]["uid"]) for o in children_all(kubectl, namespace)
    )
    assert after == before, "the restart created, replaced or removed children"
    changed = sorted(k for k in versions_before.keys() | versions_after.keys()
                     if versions_before.get(k) != versions_after.get(k))  # fmt: skip
    assert not changed, f"written in an idle minute: {changed}"
    if not isinstance(operator, InClusterOperator):
        # Cluster-wide too (apiserver_request_total has no namespace or user). Not with the operator in pods
        # on the real node: the kubelet's Events and the controller-manager's status writes for the node's
        # other pods (the chart's Redis, the operator's own rollout) are counted there as well.
        assert end - start == 0, f"{end - start} write requests in an idle minute"


def written_versions(kubectl: Any, ns: str) -> dict[tuple[str, str], str]:
    """resourceVersion of every object of a kind the operator writes, and of every Event, in the namespace."""
    kinds_csv = ",".join(sorted({*WRITTEN, "events"}))
    items = kubectl.json("-n", ns, "get", kinds_csv)["items"]
    return {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"] for o in items}


def children_all(kubectl: Any, ns: str) -> list[dict[str, Any]]:
    return kubectl.json("-n", ns, "get", OWNED_KINDS, "-l", "app.kubernetes.io/managed-by=agentscale")[
        "items"
    ]


# --- HPA


def test_hpa_mode_scales_with_real_hpa(kubectl: Any, operator: Any, namespace: str, wait_for: Any) -> None:
    step = {
        "name": "busy",
        "resources": {"requests": {"cpu": "100m"}},
        "podAnnotations": {"kwok.x-k8s.io/usage-cpu": "300m"},
        "scaling": {"mode": "hpa", "minReplicas": 1, "maxReplicas": 4, "targetCPUUtilization": 50},
    }
    kubectl.apply(workflow("scaler", [step]), namespace=namespace)
    hpa = wait_for(
        lambda: kubectl.json("-n", namespace, "get", "hpa", "scaler-busy"),
        timeout=60,
        message="HPA scaler-busy",
    )
    assert hpa["spec"]["scaleTargetRef"]["name"] == "scaler-busy"

    def scaled() -> int | None:
        dep = kubectl.json("-n", namespace, "get", "deployment", "scaler-busy")
        n = dep["spec"].get("replicas", 0)
        return n if n >= 4 else None

    wait_for(scaled, timeout=240, interval=3, message="HPA scales scaler-busy to 4 replicas")
    # The operator does not fight the HPA over replicas.
    wait_condition(kubectl, wait_for, namespace, "scaler", "Ready", "True", timeout=120)
    dep = kubectl.json("-n", namespace, "get", "deployment", "scaler-busy")
    assert dep["spec"]["replicas"] == 4
    wait_for(
        lambda: get_wf(kubectl, namespace, "scaler")["status"]["steps"]["busy"]["desired"] == 4,
        timeout=60,
        message="status to follow the HPA to 4 desired replicas",
    )
