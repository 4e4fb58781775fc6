"""The operator of the e2e suite as users run it: installed with the Helm chart, in pods on the real node,
under the chart's ServiceAccount and RBAC and nothing more.

``InClusterOperator`` has the interface of the local ``OperatorProcess`` (start, stop, restart, alive,
logs), so the tests do not care which one runs: stop scales the Deployment to zero and waits for its pods to
go, start scales it back and waits for them to be Ready, restart is a rollout restart, alive means no pod
restarted or went away since start (the operator must never crash), and logs gathers every pod's current and
previous logs.

The image is the one images/build.py built from this checkout and node.sh imported into the node's
containerd; its input key is set as a pod annotation so a changed image rolls the pods on a reused cluster
(the tag stays the same).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import yaml
from chart_support import CHART, Helm
from operator_support import REPO

RELEASE = "agentscale"
NAMESPACE = "agentscale-system"
REAL_NODE_VALUES = CHART / "ci" / "real-node-values.yaml"
SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"


def image_key(name: str) -> str:
    out = subprocess.run(
        [sys.executable, str(REPO / "images" / "build.py"), "key", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


@dataclass
class InClusterOperator:
    kubectl: Any
    helm: Helm
    replicas: int = 2
    namespace: str = NAMESPACE
    release: str = RELEASE
    extra_values: dict[str, Any] = field(default_factory=dict)
    _restarts: dict[str, int] = field(default_factory=dict)
    _stopped: bool = True

    @property
    def deployment(self) -> str:
        return self.release  # the chart's fullname when the release is named "agentscale"

    @property
    def lease_namespace(self) -> str:
        return self.namespace

    def values(self) -> dict[str, Any]:
        # The real node's placement, pull policy and the chart's Redis: one file, shared with `make demo`.
        return {
            **yaml.safe_load(REAL_NODE_VALUES.read_text()),
            "replicaCount": self.replicas,
            "podAnnotations": {"agentscale.io/image-key": image_key("operator")},
            **self.extra_values,
        }

    def install(self) -> None:
        # The images this checkout builds, in the node's containerd (rebuilt and imported when changed since
        # up.sh), so the key the pods are annotated with is the image they run.
        subprocess.run(
            ["bash", str(REPO / "e2e" / "cluster" / "node.sh"), "load-images"],
            check=True,
            timeout=1800,
        )
        self.kubectl.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": self.namespace,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            }
        )
        values = json.dumps(self.values())
        self.helm(
            "upgrade",
            "--install",
            self.release,
            str(CHART),
            "--namespace",
            self.namespace,
            "--values",
            self._values_file(values),
            "--wait",
            "--timeout",
            "4m",
            timeout=300,
        )
        self._wait_ready()
        self._stopped = False

    def _values_file(self, text: str) -> str:
        path = REPO / ".cluster" / "e2e-operator-values.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def pods(self) -> list[dict[str, Any]]:
        items = self.kubectl.json("-n", self.namespace, "get", "pods", "-l", SELECTOR)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def _wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.pods()
            ready = [
                p
                for p in pods
                if p["status"].get("phase") == "Running"
                and all(cs.get("ready") for cs in p["status"].get("containerStatuses", []))
            ]
            if len(ready) == self.replicas and len(pods) == self.replicas:
                self._restarts = {
                    p["metadata"]["name"]: sum(
                        cs.get("restartCount", 0) for cs in p["status"]["containerStatuses"]
                    )
                    for p in ready
                }
                return
            time.sleep(1)
        raise RuntimeError(f"the operator's pods were not Ready in {timeout}s:\n{self.describe()}")

    def describe(self) -> str:
        out = self.kubectl.run("-n", self.namespace, "get", "pods", "-o", "wide", "-l", SELECTOR).stdout
        events = self.kubectl.run("-n", self.namespace, "get", "events", "--sort-by=.lastTimestamp").stdout
        return f"{out}\n{events[-3000:]}\n{self.logs()[-4000:]}"

    def start(self) -> None:
        self.kubectl(
            "-n", self.namespace, "scale", "deployment", self.deployment, f"--replicas={self.replicas}"
        )
        self._wait_ready()
        self._stopped = False

    def stop(self) -> None:
        self.kubectl("-n", self.namespace, "scale", "deployment", self.deployment, "--replicas=0")
        deadline = time.monotonic() + 120
        while self.pods() and time.monotonic() < deadline:
            time.sleep(1)
        self._stopped = True

    def restart(self) -> None:
        self.kubectl("-n", self.namespace, "rollout", "restart", "deployment", self.deployment)
        self.kubectl(
            "-n",
            self.namespace,
            "rollout",
            "status",
            "deployment",
            self.deployment,
            "--timeout=240s",
            timeout=260,
        )
        self._wait_ready()

    def alive(self) -> bool:
        if self._stopped:
            return False
        pods = {p["metadata"]["name"]: p for p in self.pods()}
        for name, restarts in self._restarts.items():
            pod = pods.get(name)
            if pod is None:
                return False
            now = sum(cs.get("restartCount", 0) for cs in pod["status"].get("containerStatuses", []))
            if now != restarts:
                return False
        return True

    def logs(self) -> str:
        parts = []
        for pod in self.kubectl.json("-n", self.namespace, "get", "pods", "-l", SELECTOR)["items"]:
            name = pod["metadata"]["name"]
            for previous in (True, False):
                args = ["-n", self.namespace, "logs", name, "--tail=-1"] + (
                    ["--previous"] if previous else []
                )
                text = self.kubectl.run(*args).stdout
                if text:
                    parts.append(f"--- {name}{' (previous)' if previous else ''}\n{text}")
        return "\n".join(parts)

    def uninstall(self) -> None:
        self.helm("uninstall", self.release, "--namespace", self.namespace, "--wait", timeout=180)
