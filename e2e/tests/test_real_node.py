"""The real node: one kubelet beside the kwok pool runs real containers (e2e/cluster/node.sh).

The node is labelled and tainted ``agentscale.io/real-node=true`` so only pods meant for it land there; its
pods get addresses on a bridge inside the node's own network namespace, reach each other through ClusterIP
Services (kube-proxy) by name (CoreDNS), and their logs come back through the API server from the kubelet.
The last test starts a second real node, runs a pod on it, stops it and checks nothing of it is left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
NODE_SH = REPO / "e2e" / "cluster" / "node.sh"
REAL_LABEL = "agentscale.io/real-node"
REAL_TAINT = {"key": REAL_LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": REAL_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
# Imported into the node's containerd by node.sh from Debian's busybox-static (no registry).
IMAGE = os.environ.get("AGENTSCALE_E2E_NODE_IMAGE", "localhost/agentscale/busybox:local")
POD_CIDR = ipaddress.ip_network(os.environ.get("AGENTSCALE_E2E_NODE_POD_CIDR", "10.88.0.0/24"))


@pytest.fixture(scope="module")
def real_node(kubectl) -> str:
    nodes = kubectl.json("get", "nodes", "-l", f"{REAL_LABEL}=true")["items"]
    if not nodes:
        if os.environ.get("AGENTSCALE_REAL_NODE", "1") == "0":
            pytest.skip("AGENTSCALE_REAL_NODE=0: the cluster was started without a real node")
        pytest.fail(f"no node labelled {REAL_LABEL}=true: e2e/cluster/up.sh starts one", pytrace=False)
    names = sorted(n["metadata"]["name"] for n in nodes)
    return "real-0" if "real-0" in names else names[0]


def pod(
    name: str,
    command: list[str],
    *,
    node: str | None = None,
    tolerate: bool = True,
    labels: dict[str, str] | None = None,
    restart: str = "Never",
    port: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    }
    if port:
        container["ports"] = [{"containerPort": port}]
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 1}
    spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 1,
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    if tolerate:
        spec["tolerations"] = [TOLERATION]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def phase(kubectl, namespace: str, name: str) -> str:
    return str(kubectl.json("-n", namespace, "get", "pod", name)["status"].get("phase", ""))


def finished(kubectl, namespace: str, name: str) -> str | None:
    value = phase(kubectl, namespace, name)
    return value if value in ("Succeeded", "Failed") else None


def test_real_node_is_ready_labelled_and_tainted(kubectl, wait_for, real_node):
    node = kubectl.json("get", "node", real_node)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions.get("Ready") == "True", conditions
    assert node["metadata"]["labels"][REAL_LABEL] == "true"
    assert REAL_TAINT in node["spec"]["taints"]
    # A kubelet, not kwok: kwok manages only nodes annotated kwok.x-k8s.io/node=fake.
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    server = json.loads(kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
    assert info["kubeletVersion"] == server and info["kubeProxyVersion"] in ("", server), (info, server)
    # Its heartbeat is the kubelet's own Lease (the first one follows registration by one renew interval).
    lease = wait_for(
        lambda: kubectl.json("-n", "kube-node-lease", "get", "lease", real_node),
        timeout=30,
        message=f"the Lease of node {real_node}",
    )
    assert lease["spec"]["holderIdentity"] == real_node


def test_pod_runs_a_real_container_and_its_logs_come_back(kubectl, namespace, wait_for, real_node):
    script = 'echo "hello from $(hostname) on kernel $(uname -r)"; '
    script += "grep kubepods /proc/self/cgroup | head -1; echo bye"
    kubectl.apply(pod("hello", ["sh", "-c", script], node=real_node), namespace=namespace)
    result = wait_for(
        lambda: finished(kubectl, namespace, "hello"), timeout=90, message="pod hello to finish"
    )
    obj = kubectl.json("-n", namespace, "get", "pod", "hello")
    assert result == "Succeeded", obj["status"]
    assert obj["spec"]["nodeName"] == real_node
    # An address from the node's bridge (kwok would hand out one from a fake node's podCIDR).
    assert ipaddress.ip_address(obj["status"]["podIP"]) in POD_CIDR, obj["status"]
    (status,) = obj["status"]["containerStatuses"]
    assert status["containerID"].startswith("containerd://"), status
    assert status["state"]["terminated"]["exitCode"] == 0, status
    logs = kubectl("-n", namespace, "logs", "hello")
    # The container ran on this machine's kernel, in a pod cgroup the kubelet made.
    assert f"hello from hello on kernel {os.uname().release}" in logs, logs
    assert "kubepods" in logs and logs.rstrip().endswith("bye"), logs


def test_pods_without_the_toleration_never_land_on_the_real_node(kubectl, namespace, wait_for, real_node):
    # Asking for the node by label is not enough: the taint keeps the pod off it.
    wants = pod("wants-real-node", ["sleep", "3600"], tolerate=False)
    wants["spec"]["nodeSelector"] = {REAL_LABEL: "true"}
    others = [pod(f"plain-{i}", ["sleep", "3600"], tolerate=False) for i in range(6)]
    kubectl.apply(wants, *others, namespace=namespace)

    def unschedulable() -> str | None:
        obj = kubectl.json("-n", namespace, "get", "pod", "wants-real-node")
        for cond in obj["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False" and cond.get("message"):
                return str(cond["message"])
        return None

    message = wait_for(unschedulable, timeout=60, message="wants-real-node reported unschedulable")
    assert "untolerated taint" in message, message

    def all_bound() -> list[str] | None:
        items = kubectl.json("-n", namespace, "get", "pods")["items"]
        bound = [p["spec"].get("nodeName") for p in items if p["metadata"]["name"].startswith("plain-")]
        return bound if len(bound) == 6 and all(bound) else None

    bound = wait_for(all_bound, timeout=60, message="plain pods bound")
    assert real_node not in bound, bound
    assert not kubectl.json("-n", namespace, "get", "pod", "wants-real-node")["spec"].get("nodeName")


def test_pods_talk_through_a_clusterip_service_by_dns_name(kubectl, namespace, wait_for, real_node):
    token = f"agentscale-real-node-{uuid.uuid4().hex[:8]}"
    serve = f"mkdir -p /tmp/www && echo {token} > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    kubectl.apply(
        pod("web", ["sh", "-c", serve], node=real_node, labels={"app": "web"}, restart="Always", port=8080),
        service,
        namespace=namespace,
    )
    cluster_ip = kubectl.json("-n", namespace, "get", "service", "web")["spec"]["clusterIP"]
    wait_for(
        lambda: kubectl(
            "-n",
            namespace,
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[*]}",
        ).strip(),
        timeout=90,
        message="a ready endpoint behind Service web",
    )
    fqdn = f"web.{namespace}.svc.cluster.local"
    # Debian's busybox-static wget crashes in its static glibc resolver (even for an address), so the
    # client resolves with busybox's own DNS client (nslookup, through resolv.conf's search path for the
    # short name) and speaks HTTP with nc to the address it got.
    resolve = "nslookup {} | awk '$1 == \"Address:\" && $2 !~ /:/ {{print $2}}' | tail -1"
    client = (
        "for i in $(seq 1 30); do "
        f"a=$({resolve.format('web')}); b=$({resolve.format(fqdn)}); "
        'if [ -n "$a" ] && [ "$a" = "$b" ]; then '
        'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 "$a" 80 > /tmp/out; '
        f'if grep -q {token} /tmp/out; then echo "web and {fqdn} resolved to $a"; cat /tmp/out; exit 0; fi; '
        "fi; sleep 1; done; exit 1"
    )
    kubectl.apply(pod("client", ["sh", "-c", client], node=real_node), namespace=namespace)
    result = wait_for(
        lambda: finished(kubectl, namespace, "client"), timeout=90, message="client pod to finish"
    )
    logs = kubectl("-n", namespace, "logs", "client")
    assert result == "Succeeded", logs
    # Both names resolved (CoreDNS) to the Service's ClusterIP, and a connection to it reached the server
    # pod (kube-proxy).
    assert f"web and {fqdn} resolved to {cluster_ip}" in logs, (cluster_ip, logs)
    assert token in logs and "200 OK" in logs, logs
    # exec goes API server -> kubelet -> containerd's streaming server, all inside the node's namespace.
    assert kubectl("-n", namespace, "exec", "web", "--", "cat", "/tmp/www/index.html").strip() == token


def _iptables_chains() -> set[str]:
    chains: set[str] = set()
    for table in ("nat", "filter"):
        proc = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False)
        chains |= {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("-N ")}
    return {c for c in chains if c.startswith(("KUBE-", "CNI-"))}


def test_teardown_of_a_real_node_leaves_nothing_behind(kubectl, namespace, wait_for, real_node, kubeconfig):
    """A second real node (same scripts, its own namespace) runs a pod; node.sh down removes all of it."""
    if os.geteuid() != 0:
        pytest.skip("starting a real node needs root")
    env = {**os.environ, "AGENTSCALE_KUBECONFIG": kubeconfig}
    if subprocess.run([str(NODE_SH), "status"], env=env, capture_output=True, check=False).returncode != 0:
        pytest.skip(
            "this cluster's real node was not started by e2e/cluster/node.sh with this environment "
            "(AGENTSCALE_CLUSTER_NAME, KWOK_WORKDIR)"
        )
    name = f"real-teardown-{uuid.uuid4().hex[:4]}"
    env["AGENTSCALE_REAL_NODE_NAME"] = name
    env["AGENTSCALE_REAL_NODE_PROJECT_IMAGES"] = "0"  # it runs busybox only: no minute of importing Triton
    names = dict(
        line.split("=", 1)
        for line in subprocess.run(
            [str(NODE_SH), "env"], env=env, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    chains_before = _iptables_chains()
    try:
        up = subprocess.run(
            [str(NODE_SH), "up"], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert up.returncode == 0, up.stderr
        kubectl.apply(pod("on-second-node", ["sleep", "3600"], node=name), namespace=namespace)
        wait_for(
            lambda: phase(kubectl, namespace, "on-second-node") == "Running",
            timeout=90,
            message="pod Running",
        )
        assert Path(f"/run/netns/{names['NETNS']}").exists()
    finally:
        down = subprocess.run(
            [str(NODE_SH), "down"], env=env, capture_output=True, text=True, timeout=300, check=False
        )
    assert down.returncode == 0, down.stderr
    clean = subprocess.run(
        [str(NODE_SH), "check-clean"], env=env, capture_output=True, text=True, check=False
    )
    assert clean.returncode == 0, clean.stderr
    # Nothing machine-wide either: no namespace, no host interface, no new KUBE-/CNI- chains on the host,
    # no process that names the node's folder.
    assert not Path(f"/run/netns/{names['NETNS']}").exists()
    assert subprocess.run(
        ["ip", "link", "show", names["HOST_VETH"]], capture_output=True, check=False
    ).returncode
    assert _iptables_chains() <= chains_before, _iptables_chains() - chains_before
    leftover = subprocess.run(
        ["pgrep", "-af", names["NODE_DIR"] + "/"], capture_output=True, text=True, check=False
    )
    assert not leftover.stdout.strip(), leftover.stdout
    # The main real node is untouched.
    main = kubectl.json("get", "node", real_node)
    assert {c["type"]: c["status"] for c in main["status"]["conditions"]}.get("Ready") == "True"
    wait_for(
        lambda: kubectl.run("get", "node", name).returncode != 0, timeout=30, message=f"node {name} deleted"
    )
