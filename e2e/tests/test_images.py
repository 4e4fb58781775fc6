"""The project's images, built here (images/build.py) and imported into the real node's containerd by node.sh,
each started as a pod on the real node and checked at its entrypoint:

- operator: ``agentscale --help`` exits 0 with the CLI's usage;
- redis: ``redis-server`` answers PING (the readiness probe runs ``redis-cli ping``);
- worker: the gateway's health endpoint answers, next to a redis container in the same pod;
- triton: ``tritonserver`` (the wheel's server behind the image's wrapper) is ready with a model of the
  example repository loaded by its Python backend.

Every pod runs under the restricted Pod Security Standard (non-root by the image's numeric USER, no
privilege escalation, no capabilities, RuntimeDefault seccomp, read-only root filesystem with an emptyDir
for /tmp) with ``imagePullPolicy: IfNotPresent`` and no registry to pull from: the images must already be in
the node's containerd.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

VERSION = "0.1.0"
REAL_LABEL = "agentscale.io/real-node"
TOLERATION = {"key": REAL_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture(scope="module")
def real_node(kubectl) -> str:
    nodes = kubectl.json("get", "nodes", "-l", f"{REAL_LABEL}=true")["items"]
    if not nodes:
        if os.environ.get("AGENTSCALE_REAL_NODE", "1") == "0":
            pytest.skip("AGENTSCALE_REAL_NODE=0: the cluster was started without a real node")
        pytest.fail(f"no node labelled {REAL_LABEL}=true: e2e/cluster/up.sh starts one", pytrace=False)
    return str(sorted(n["metadata"]["name"] for n in nodes)[0])


def container(name: str, image: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": f"agentscale/{image}:{VERSION}",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": RESTRICTED,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
        **fields,
    }


def pod(name: str, node: str, *containers: dict[str, Any], restart: str = "Always") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [TOLERATION],
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 2,
            "automountServiceAccountToken": False,
            "containers": list(containers),
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    }


def state(kubectl, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl.json("-n", namespace, "get", "pod", name))


def ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"].get("conditions", []))


def wait_ready(kubectl, wait_for, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = state(kubectl, namespace, name)
        for cs in obj["status"].get("containerStatuses", []):
            waiting = cs.get("state", {}).get("waiting", {})
            if waiting.get("reason") in ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff"):
                pytest.fail(f"{name}: image {cs['image']} is not in the node's containerd: {waiting}")
            if cs.get("restartCount", 0) > 0:
                logs = kubectl.run("-n", namespace, "logs", name, "-c", cs["name"], "--previous").stdout
                pytest.fail(f"{name}/{cs['name']} restarted: {cs.get('lastState')}\n{logs[-2000:]}")
        return obj if ready(obj) else None

    return dict(wait_for(check, timeout=timeout, message=f"pod {name} Ready"))


def test_operator_image_runs_its_cli(kubectl, namespace, wait_for, real_node):
    kubectl.apply(
        pod("image-operator", real_node, container("main", "operator", args=["--help"]), restart="Never"),
        namespace=namespace,
    )

    def done() -> str | None:
        value = state(kubectl, namespace, "image-operator")["status"].get("phase")
        return value if value in ("Succeeded", "Failed") else None

    phase = wait_for(done, timeout=120, message="the operator image's --help to finish")
    logs = kubectl("-n", namespace, "logs", "image-operator")
    assert phase == "Succeeded", logs
    assert logs.startswith("usage: agentscale"), logs
    assert "run" in logs and "render" in logs, logs


def test_redis_image_answers_ping(kubectl, namespace, wait_for, real_node):
    probe = {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 2}
    kubectl.apply(
        pod("image-redis", real_node, container("redis", "redis", readinessProbe=probe)), namespace=namespace
    )
    obj = wait_ready(kubectl, wait_for, namespace, "image-redis", timeout=120)
    (status,) = obj["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0, status
    # Non-root by the image's USER (the pod does not set runAsUser).
    assert "runAsUser" not in obj["spec"]["containers"][0]["securityContext"]


def test_worker_image_serves_the_gateway_health_endpoint(kubectl, namespace, wait_for, real_node):
    redis = container("redis", "redis")
    gateway = container(
        "gateway",
        "worker",
        args=["gateway"],
        env=[
            {"name": "AGENTSCALE_REDIS_URL", "value": "redis://127.0.0.1:6379/0"},
            {"name": "AGENTSCALE_WORKFLOW", "value": "image-test"},
            {"name": "AGENTSCALE_NAMESPACE", "value": namespace},
        ],
        ports=[{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
        readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
    )
    kubectl.apply(pod("image-worker", real_node, redis, gateway), namespace=namespace)
    obj = wait_ready(kubectl, wait_for, namespace, "image-worker", timeout=120)
    assert all(cs["ready"] for cs in obj["status"]["containerStatuses"]), obj["status"]


def test_triton_image_is_ready_with_a_model(kubectl, namespace, wait_for, real_node):
    # One model of the example repository, loaded explicitly: the committed config.pbtxt files of the GPU
    # models ask for KIND_GPU instances, which this CPU node cannot give (the operator renders CPU ones).
    triton = container(
        "triton",
        "triton",
        args=[
            "--model-repository=/opt/agentscale/models",
            "--model-control-mode=explicit",
            "--load-model=encoder-large",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
        ],
        ports=[{"name": "http", "containerPort": 8000}],
        readinessProbe={
            "httpGet": {"path": "/v2/models/encoder-large/ready", "port": "http"},
            "periodSeconds": 2,
        },
        resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
    )
    kubectl.apply(pod("image-triton", real_node, triton), namespace=namespace)
    obj = wait_ready(kubectl, wait_for, namespace, "image-triton", timeout=180)
    logs = kubectl("-n", namespace, "logs", "image-triton")
    assert "successfully loaded 'encoder-large'" in logs, logs[-3000:]
    assert obj["status"]["containerStatuses"][0]["restartCount"] == 0
