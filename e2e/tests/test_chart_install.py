"""The Helm chart (charts/agentscale) on a cluster: install, upgrade, uninstall, and what its RBAC allows.

These tests use a real API server, but the operator image is not built yet and the local cluster's nodes are
kwok fakes (containers never execute): they check the objects the chart creates, that its pods pass the
restricted Pod Security Standard at admission, that an upgrade with a changed value rolls the operator's pod
template, what uninstall leaves, and what the ServiceAccount may do (`kubectl auth can-i --as`). They do not
check a running operator.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from agentscale import rbac
from chart_support import CHART, Helm, resolve_helm

CRD_NAME = "agentworkflows.agentscale.io"
E2E_LABEL = "agentscale.io/e2e"  # as the namespace fixture labels its namespaces
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm(resolve_helm())


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str

    @property
    def cluster_name(self) -> str:  # ClusterRole/ClusterRoleBinding: "<namespace>-<fullname>"
        return f"{self.namespace}-{self.name}"

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def _namespace(kubectl: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    labels = {E2E_LABEL: "true", **RESTRICTED}
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    return name


def _install(helm: Helm, ns: str, name: str, *args: str) -> Release:
    helm("install", name, str(CHART), "--namespace", ns, "--set", "redis.enabled=true", *args, timeout=180)
    return Release(name, ns, name)  # the fullname is the release name when it contains "agentscale"


@pytest.fixture(scope="module")
def cluster_helm(helm: Helm, kubeconfig: str) -> Helm:
    return Helm(helm.binary, kubeconfig)


@pytest.fixture(scope="module")
def release(cluster_helm: Helm, kubectl: Any) -> Iterator[Release]:
    """One install, shared by the read-only checks below; uninstalled afterwards."""
    ns = _namespace(kubectl, "e2e-chart")
    rel = _install(cluster_helm, ns, "agentscale")
    # The API server's RBAC cache learns new bindings from a watch: wait for it before asking can-i.
    deadline = time.monotonic() + 30
    while not _can_i(kubectl, rel, "patch", "agentworkflows.agentscale.io/status", "default"):
        assert time.monotonic() < deadline, "the chart's ClusterRoleBinding did not take effect in 30 s"
        time.sleep(0.5)
    yield rel
    if os.environ.get("AGENTSCALE_E2E_KEEP") != "1":
        cluster_helm.run("uninstall", rel.name, "--namespace", ns, "--wait", timeout=120)
        kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


def _names(kubectl: Any, kind: str, ns: str | None, selector: str) -> list[str]:
    where = ["-n", ns] if ns else []
    return sorted(i["metadata"]["name"] for i in kubectl.json("get", kind, *where, "-l", selector)["items"])


def test_install_creates_the_chart_objects_and_the_crd(release: Release, kubectl: Any) -> None:
    sel = f"app.kubernetes.io/instance={release.name}"
    ns = release.namespace
    assert _names(kubectl, "deployments", ns, sel) == ["agentscale", "agentscale-redis"]
    assert _names(kubectl, "services", ns, sel) == ["agentscale-metrics", "agentscale-redis"]
    assert _names(kubectl, "poddisruptionbudgets", ns, sel) == ["agentscale"]  # two operator replicas
    assert _names(kubectl, "serviceaccounts", ns, sel) == [release.service_account]
    assert _names(kubectl, "roles", ns, sel) == [release.name]
    assert _names(kubectl, "rolebindings", ns, sel) == [release.name]
    assert release.cluster_name in _names(kubectl, "clusterroles", None, sel)
    assert release.cluster_name in _names(kubectl, "clusterrolebindings", None, sel)
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


def test_pods_are_admitted_under_restricted_pod_security(
    release: Release, kubectl: Any, wait_for: Any
) -> None:
    """The namespace enforces `restricted`: the ReplicaSets' pods exist only if admission let them in."""
    ns = release.namespace
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged-probe", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]},
    }
    proc = kubectl.run("create", "--dry-run=server", "-f", "-", input=json.dumps(privileged))
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, "restricted is not enforced here"
    for component in ("operator", "redis"):
        sel = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component={component}"
        wait_for(
            lambda sel=sel: _names(kubectl, "pods", ns, sel),
            timeout=60,
            message=f"a {component} pod admitted in {ns}",
        )


def _can_i(kubectl: Any, rel: Release, verb: str, resource: str, ns: str | None) -> bool:
    resource, _, sub = resource.partition("/")
    where = ["-n", ns] if ns else ["--all-namespaces"]
    extra = [f"--subresource={sub}"] if sub else []
    proc = kubectl.run("auth", "can-i", verb, resource, *extra, *where, f"--as={rel.subject}")
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


def _granted() -> list[tuple[str, str]]:
    """(verb, resource.group[/subresource]) for every verb the generated ClusterRole grants."""
    out = []
    for rule in rbac.cluster_rules():
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                base, _, sub = res.partition("/")
                name = f"{base}.{group}" if group else base
                out.extend((verb, f"{name}/{sub}" if sub else name) for verb in rule["verbs"])
    return out


@pytest.mark.parametrize(("verb", "resource"), _granted())
def test_service_account_can_do_what_the_operator_does(
    release: Release, kubectl: Any, verb: str, resource: str
) -> None:
    ns = None if resource.startswith("customresourcedefinitions") else "default"
    assert _can_i(kubectl, release, verb, resource, ns)
    if verb in ("list", "watch"):
        assert _can_i(kubectl, release, verb, resource, None), "cluster-wide watch"


@pytest.mark.parametrize(
    ("verb", "resource"),
    [
        ("patch", "agentworkflows.agentscale.io/status"),
        ("create", "deployments.apps"),
        ("patch", "deployments.apps/scale"),
        ("create", "events"),
        ("list", "pods"),
    ],
)
def test_service_account_can_the_issue_list(release: Release, kubectl: Any, verb: str, resource: str) -> None:
    assert _can_i(kubectl, release, verb, resource, "default")


def test_service_account_can_use_leases_in_its_own_namespace_only(release: Release, kubectl: Any) -> None:
    for verb in ("get", "create", "update"):
        assert _can_i(kubectl, release, verb, "leases.coordination.k8s.io", release.namespace)
        assert not _can_i(kubectl, release, verb, "leases.coordination.k8s.io", "default")


@pytest.mark.parametrize(
    ("verb", "resource", "ns"),
    [
        ("get", "secrets", "default"),
        ("list", "secrets", None),
        ("watch", "secrets", "default"),
        ("get", "secrets", "OWN"),
        ("create", "pods/exec", "default"),
        ("get", "pods/log", "default"),
        ("create", "pods", "default"),
        ("delete", "pods", "default"),
        ("delete", "nodes", None),
        ("create", "daemonsets.apps", "default"),
        ("create", "statefulsets.apps", "default"),
        ("create", "jobs.batch", "default"),
        ("update", "deployments.apps", "default"),
        ("patch", "agentworkflows.agentscale.io", "default"),
        ("delete", "agentworkflows.agentscale.io", "default"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("create", "clusterroles.rbac.authorization.k8s.io", None),
        ("create", "rolebindings.rbac.authorization.k8s.io", "default"),
        ("impersonate", "serviceaccounts", "default"),
    ],
)
def test_service_account_cannot(
    release: Release, kubectl: Any, verb: str, resource: str, ns: str | None
) -> None:
    assert not _can_i(kubectl, release, verb, resource, release.namespace if ns == "OWN" else ns)


def test_documented_crd_upgrade_step_applies(release: Release, kubectl: Any) -> None:
    """docs/chart.md: Helm never upgrades crds/, so upgrades start with this server-side apply."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


def _operator_template_env(kubectl: Any, rel: Release) -> tuple[int, dict[str, str]]:
    dep = kubectl.json("-n", rel.namespace, "get", "deployment", rel.name)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dep["metadata"]["generation"], {e["name"]: e["value"] for e in c["env"] if "value" in e}


def _replicaset_debounces(kubectl: Any, rel: Release) -> set[str]:
    sel = f"app.kubernetes.io/instance={rel.name},app.kubernetes.io/component=operator"
    out = set()
    for rs in kubectl.json("-n", rel.namespace, "get", "replicasets", "-l", sel)["items"]:
        env = rs["spec"]["template"]["spec"]["containers"][0]["env"]
        out.update(e["value"] for e in env if e["name"] == "AGENTSCALE_STATUS_DEBOUNCE")
    return out


def test_upgrade_rolls_the_operator_and_uninstall_leaves_only_the_crd(
    cluster_helm: Helm, kubectl: Any, wait_for: Any
) -> None:
    ns = _namespace(kubectl, "e2e-chart-life")
    try:
        rel = _install(cluster_helm, ns, "agentscale-life")
        gen, env = _operator_template_env(kubectl, rel)
        assert env["AGENTSCALE_STATUS_DEBOUNCE"] == "0.5"
        wait_for(
            lambda: _replicaset_debounces(kubectl, rel) == {"0.5"}, timeout=60, message="first ReplicaSet"
        )

        cluster_helm(
            "upgrade", rel.name, str(CHART), "--namespace", ns, "--reuse-values",
            "--set", "operator.statusDebounceSeconds=2", timeout=180,
        )  # fmt: skip
        new_gen, env = _operator_template_env(kubectl, rel)
        assert env["AGENTSCALE_STATUS_DEBOUNCE"] == "2"
        assert new_gen == gen + 1
        # The Deployment controller rolls out a new ReplicaSet with the new pod template.
        wait_for(lambda: "2" in _replicaset_debounces(kubectl, rel), timeout=60, message="a new ReplicaSet")
        history = json.loads(cluster_helm("history", rel.name, "--namespace", ns, "--output", "json"))
        assert [h["revision"] for h in history] == [1, 2]

        cluster_helm("uninstall", rel.name, "--namespace", ns, "--wait", timeout=180)
        sel = f"app.kubernetes.io/instance={rel.name}"
        rendered = ("deployments", "replicasets", "services", "poddisruptionbudgets", "serviceaccounts")
        for kind in (*rendered, "roles", "rolebindings"):
            wait_for(lambda kind=kind: not _names(kubectl, kind, ns, sel), timeout=60, message=f"{kind} gone")
        wait_for(lambda: not _names(kubectl, "pods", ns, sel), timeout=90, message="pods gone")
        for kind in ("clusterroles", "clusterrolebindings"):
            assert rel.cluster_name not in _names(kubectl, kind, None, sel)
        assert not _names(kubectl, "secrets", ns, f"owner=helm,name={rel.name}"), "helm release records left"
        # What stays, as docs/chart.md says: the CRD (and so every AgentWorkflow in the cluster).
        kubectl("get", f"crd/{CRD_NAME}")
    finally:
        if os.environ.get("AGENTSCALE_E2E_KEEP") != "1":
            cluster_helm.run("uninstall", "agentscale-life", "--namespace", ns, timeout=120)
            kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
