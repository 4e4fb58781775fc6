"""A real Prometheus in the cluster, for the closed-loop tests: a Deployment on the real node.

Pods live in the real node's network namespace, so the host cannot reach them: the Prometheus that scrapes
the workers, and that the in-cluster operator queries, must itself run as a pod there. It runs the image
``images/prometheus.Dockerfile`` builds (Debian's ``prometheus`` 2.42, only the server binary), under a
ServiceAccount bound to a ClusterRole that may only list and watch pods (what ``kubernetes_sd_configs`` role
``pod`` needs), with one scrape job: the pods of the namespaces it is given, relabelled exactly as
production is told to (``promql.SCRAPE_RELABEL_CONFIGS``, docs/tuning.md "Signals"), every
``scrape_interval_s``. Its TSDB is an emptyDir; stopping it scales the Deployment to zero, so a restart
starts empty (the controller's windows fill again within a minute).

The test reads it the way the operator does, over HTTP inside the cluster: :meth:`InClusterPrometheus.query`
runs a few lines of Python in a pod that has Python (``kubectl exec``), since the Prometheus image has no
shell tools and the API server cannot reach pod addresses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml
from agentscale.resource_controller.promql import SCRAPE_RELABEL_CONFIGS

REAL_LABEL = "agentscale.io/real-node"
TOLERATION = {"key": REAL_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
IMAGE = "agentscale/prometheus:0.1.0"  # images/build.py's reference (docker.io/ is implied)
PORT = 9090
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def config(namespaces: list[str], scrape_interval_s: float = 2.0) -> dict[str, Any]:
    """prometheus.yml: one kubernetes_sd_configs (role pod) job over ``namespaces`` with the controller's
    relabelling."""
    interval = f"{int(scrape_interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "agentscale-pods",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": namespaces}}],
                "relabel_configs": SCRAPE_RELABEL_CONFIGS,
            }
        ],
    }


def manifests(
    namespace: str, watched: list[str], name: str = "prometheus", scrape_interval_s: float = 2.0
) -> list[dict[str, Any]]:
    """ServiceAccount, ClusterRole (pods: list, watch), ClusterRoleBinding, ConfigMap, Deployment (one
    replica on the real node) and Service, all named ``name`` (the cluster-scoped two also by namespace)."""
    cluster_name = f"{name}-{namespace}"
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": f"{name}-{namespace}"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": cluster_name},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"prometheus.yml": yaml.safe_dump(config(watched, scrape_interval_s), sort_keys=False)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": name,
                        "nodeSelector": {REAL_LABEL: "true"},
                        "tolerations": [TOLERATION],
                        "terminationGracePeriodSeconds": 5,
                        "containers": [
                            {
                                "name": "prometheus",
                                "image": IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                                "args": [
                                    "--config.file=/etc/prometheus/prometheus.yml",
                                    "--storage.tsdb.path=/prometheus",
                                    "--storage.tsdb.retention.time=1h",
                                    f"--web.listen-address=:{PORT}",
                                ],
                                "ports": [{"name": "http", "containerPort": PORT}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/-/ready", "port": PORT},
                                    "periodSeconds": 2,
                                },
                                "securityContext": RESTRICTED,
                                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/prometheus"},
                                    {"name": "data", "mountPath": "/prometheus"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": name}},
                            {"name": "data", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": PORT, "targetPort": PORT}]},
        },
    ]


# Run in a pod with Python (the worker image): one instant query, its JSON answer on stdout.
_QUERY = """
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
with urllib.request.urlopen(url, timeout=10) as r:
    print(json.dumps(json.load(r)))
"""


@dataclass
class InClusterPrometheus:
    kubectl: Any
    namespace: str
    watched: list[str]
    name: str = "prometheus"
    scrape_interval_s: float = 2.0

    @property
    def url(self) -> str:
        """Its address inside the cluster (what the operator is given)."""
        return f"http://{self.name}.{self.namespace}:{PORT}"

    def install(self) -> None:
        self.kubectl.apply(*manifests(self.namespace, self.watched, self.name, self.scrape_interval_s))
        self.wait_ready()

    def uninstall(self) -> None:
        cluster_name = f"{self.name}-{self.namespace}"
        self.kubectl.run("delete", "clusterrolebinding,clusterrole", cluster_name, "--ignore-not-found")
        self.kubectl.run("-n", self.namespace, "delete", "deployment,service,configmap,serviceaccount",
                         self.name, "--ignore-not-found", "--wait=false")  # fmt: skip

    def pods(self) -> list[dict[str, Any]]:
        sel = f"app.kubernetes.io/name={self.name}"
        items = self.kubectl.json("-n", self.namespace, "get", "pods", "-l", sel)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = [
                p
                for p in self.pods()
                if any(
                    c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])
                )
            ]
            if ready:
                return
            time.sleep(1)
        pods = self.kubectl.run("-n", self.namespace, "get", "pods", "-o", "wide").stdout
        raise AssertionError(f"Prometheus not Ready in {timeout:.0f}s:\n{pods}")

    def stop(self) -> None:
        """Scale to zero and wait for its pod to go: the operator's queries then fail to connect."""
        self.kubectl("-n", self.namespace, "scale", "deployment", self.name, "--replicas=0")
        deadline = time.monotonic() + 120
        while self.kubectl.json("-n", self.namespace, "get", "pods", "-l",
                                f"app.kubernetes.io/name={self.name}")["items"]:  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError("Prometheus's pod did not go in 120 s")
            time.sleep(1)

    def start(self) -> None:
        self.kubectl("-n", self.namespace, "scale", "deployment", self.name, "--replicas=1")
        self.wait_ready()

    def query(self, expr: str, via_pod: str, via_namespace: str | None = None) -> list[dict[str, Any]]:
        """An instant query's ``data.result``, sent from ``via_pod`` (a pod whose image has python)."""
        out = self.kubectl(
            "-n", via_namespace or self.namespace, "exec", via_pod, "--",
            "python", "-c", _QUERY, self.url, expr,
            timeout=30,
        )  # fmt: skip
        doc = json.loads(out)
        if doc.get("status") != "success":
            raise AssertionError(f"Prometheus query {expr!r} failed: {doc}")
        return list(doc["data"]["result"])


@contextmanager
def operator_reading(
    operator: Any, kubectl: Any, namespace: str, env: Mapping[str, str]
) -> Iterator[InClusterPrometheus]:
    """Prometheus in ``namespace`` scraping it, and the suite's operator release (an InClusterOperator)
    upgraded to read it with ``env`` added to the operator's environment; both undone afterwards."""
    prom = InClusterPrometheus(kubectl, namespace, [namespace], scrape_interval_s=2.0)
    saved = dict(operator.extra_values)
    try:
        prom.install()
        operator.extra_values = {
            **saved,
            "operator": {
                "prometheusUrl": prom.url,
                "extraEnv": [{"name": k, "value": v} for k, v in env.items()],
            },
        }
        operator.install()  # helm upgrade: the changed environment rolls the operator's pods
        yield prom
    finally:
        operator.extra_values = saved
        operator.install()
        prom.uninstall()
