"""The recommendation example's data plane as real pods on the real node: gateway -> Redis -> step workers ->
Triton, through Services and cluster DNS, with the operator (installed by the chart, in-cluster) rendering it.

The example is applied as written except for a spec override that suits this machine: ``spec.placement`` pins
every pod to the real node, the model servers drop ``gpu`` (the node has none) and use the Triton image built
here, and requests are made small enough for two cores. Its ``redisUrl`` names the chart's optional Redis
(release ``agentscale`` in ``agentscale-system``), which the suite's operator release runs on the real node.

A load client (dataplane_client.py, in a pod with the worker image) submits runs at a steady rate; a pod of a
two-replica step is deleted while they flow. Every run must be answered once, with the answer the example's
own computation gives directly (the torch networks the Triton models run, called here on the host), and the
ReplicaSet must replace
the pod. The time from ``kubectl apply`` to the first answered request is printed (and written to
$AGENTSCALE_E2E_RECORD_DIR/dataplane-pods.json when that is set).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dataplane_client import expected, query
from incluster import InClusterOperator
from operator_support import EXAMPLES

pytestmark = pytest.mark.cluster

REAL_LABEL = "agentscale.io/real-node"
TOLERATION = {"key": REAL_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
CLIENT = Path(__file__).with_name("dataplane_client.py")
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RUNS, RATE = 120, 4.0


def example_on_the_real_node(namespace: str) -> dict[str, Any]:
    doc = next(d for d in yaml.safe_load_all((EXAMPLES / "recommendation.yaml").read_text()) if d)
    doc["metadata"]["namespace"] = namespace
    spec = doc["spec"]
    spec["placement"] = {"nodeSelector": {REAL_LABEL: "true"}, "tolerations": [TOLERATION]}
    small = {"requests": {"cpu": "20m", "memory": "128Mi"}}
    for model in spec["models"]:
        model.pop("gpu", None)
        model["image"] = "agentscale/triton:0.1.0"
        model["resources"] = {"requests": {"cpu": "20m", "memory": "256Mi"}}
    for step in spec["steps"]:
        step["resources"] = small
    spec.setdefault("gateway", {})["resources"] = small
    return dict(doc)


def tokens_secret(workflow: str) -> dict[str, Any]:
    """The gateway's bearer tokens (auth is on by default): one client, a fresh token; the client pod reads
    it from this Secret."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{workflow}-gateway-tokens"},
        "stringData": {"e2e-client": secrets.token_hex(32)},
    }


def client_pod(namespace: str, workflow: str) -> list[dict[str, Any]]:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "load-client"},
        "data": {"client.py": CLIENT.read_text()},
    }
    env = {
        "GATEWAY": f"http://{workflow}-gateway:8080",
        "REDIS_URL": "redis://agentscale-redis.agentscale-system:6379/0",
        "NAMESPACE": namespace,
        "WORKFLOW": workflow,
        "RUNS": str(RUNS),
        "RATE": str(RATE),
        "DEADLINE_S": "420",
        "PYTHONUNBUFFERED": "1",
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "load-client"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {REAL_LABEL: "true"},
            "tolerations": [TOLERATION],
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "client",
                    "image": "agentscale/worker:0.1.0",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "/client/client.py"],
                    "env": [{"name": k, "value": v} for k, v in env.items()]
                    + [
                        {
                            "name": "GATEWAY_TOKEN",
                            "valueFrom": {
                                "secretKeyRef": {"name": f"{workflow}-gateway-tokens", "key": "e2e-client"}
                            },
                        }
                    ],
                    "securityContext": RESTRICTED,
                    "resources": {"requests": {"cpu": "20m", "memory": "128Mi"}},
                    "volumeMounts": [{"name": "client", "mountPath": "/client"}],
                }
            ],
            "volumes": [{"name": "client", "configMap": {"name": "load-client"}}],
        },
    }
    return [config, pod]


def deployments_available(kubectl, namespace: str) -> list[str] | None:
    items = kubectl.json("-n", namespace, "get", "deployments")["items"]
    if len(items) < 6:  # 3 steps, 2 model servers, the gateway
        return None
    for d in items:
        if (d["status"].get("availableReplicas") or 0) < (d["spec"].get("replicas") or 0):
            return None
    return sorted(d["metadata"]["name"] for d in items)


def test_recommendation_runs_as_real_pods_and_survives_a_deleted_step_pod(
    kubectl, namespace, wait_for, operator
):
    if not isinstance(operator, InClusterOperator):
        pytest.skip("the operator runs as a local process (no real node): this test needs the chart's Redis")
    manifest = example_on_the_real_node(namespace)
    workflow = manifest["metadata"]["name"]
    t_apply = time.time()
    kubectl.apply(tokens_secret(workflow), namespace=namespace)  # before the gateway pods mount it
    kubectl.apply(manifest, namespace=namespace)
    kubectl.apply(*client_pod(namespace, workflow), namespace=namespace)

    def logs() -> str:
        return kubectl.run("-n", namespace, "logs", "load-client").stdout

    try:
        names = wait_for(
            lambda: deployments_available(kubectl, namespace),
            timeout=420,
            message="every Deployment available",
        )
    except AssertionError:
        print(kubectl.run("-n", namespace, "get", "pods", "-o", "wide").stdout)
        print(kubectl.run("-n", namespace, "get", "events", "--sort-by=.lastTimestamp").stdout[-4000:])
        raise
    t_ready = time.time()
    for name in names:  # every pod of the workflow runs on the real node
        dep = kubectl.json("-n", namespace, "get", "deployment", name)
        assert dep["spec"]["template"]["spec"]["nodeSelector"][REAL_LABEL] == "true"
    pods = kubectl.json("-n", namespace, "get", "pods")["items"]
    assert {p["spec"].get("nodeName") for p in pods if p["metadata"]["name"] != "load-client"} == {"real-0"}

    # A pod of the two-replica step is deleted while runs flow: the ReplicaSet replaces it.
    wait_for(lambda: "PROGRESS submitted=40" in logs(), timeout=300, message="40 runs submitted")
    step = f"{workflow}-encode"
    victims = kubectl.json("-n", namespace, "get", "pods", "-l", "agentscale.io/step=encode")["items"]
    assert len(victims) == 2, [p["metadata"]["name"] for p in victims]
    victim = victims[0]["metadata"]["name"]
    kubectl("-n", namespace, "delete", "pod", victim, "--wait=false")

    result_line = wait_for(
        lambda: next((ln for ln in logs().splitlines() if ln.startswith("RESULT ")), None),
        timeout=480,
        interval=2,
        message="the load client's result",
    )
    result = json.loads(result_line.removeprefix("RESULT "))
    text = logs()
    first = re.search(r"FIRST_ANSWER ([0-9.]+)", text)
    ranked = result.pop("ranked")
    print(json.dumps(result, indent=1))
    assert result["statuses"] == {"done": RUNS}, result
    wrong = [
        {"run": i, "got": got, "want": want}
        for i, got in sorted(ranked.items(), key=lambda kv: int(kv[0]))
        if got != (want := asyncio.run(expected(query(int(i)))))
    ]
    assert wrong == [], (len(wrong), wrong[:5])
    assert result["answered"] == RUNS and result["answered_twice"] == [], result

    def replaced() -> bool:
        # encode is in mode hpa (2 to 8 replicas): the HPA may have added pods under the load, so the
        # ReplicaSet is done when the victim is gone and the Deployment's own count is running and ready.
        want = int(kubectl.json("-n", namespace, "get", "deployment", step)["spec"].get("replicas") or 0)
        now = kubectl.json("-n", namespace, "get", "pods", "-l", "agentscale.io/step=encode")["items"]
        live = [p for p in now if not p["metadata"].get("deletionTimestamp")]
        names = {p["metadata"]["name"] for p in live}
        ready = [p for p in live if all(cs.get("ready") for cs in p["status"].get("containerStatuses", [{}]))]
        return victim not in names and want >= 2 and len(names) == want and len(ready) >= want

    wait_for(replaced, timeout=120, message=f"the ReplicaSet of {step} to replace {victim}")
    measured = {
        "apply_to_all_available_s": round(t_ready - t_apply, 1),
        "apply_to_first_answer_s": round(float(first.group(1)) - t_apply, 1) if first else None,
        "runs": RUNS,
        "rate_per_s": RATE,
        "load_seconds": result["seconds"],
        "deleted_pod": "encode (1 of 2 replicas)",
    }
    print("MEASURED " + json.dumps(measured))
    record = os.environ.get("AGENTSCALE_E2E_RECORD_DIR")
    if record:
        Path(record).mkdir(parents=True, exist_ok=True)
        (Path(record) / "dataplane-pods.json").write_text(json.dumps(measured, indent=1) + "\n")
