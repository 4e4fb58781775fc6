"""The Helm chart (charts/agentscale): lint, render, install, upgrade, uninstall, and what its RBAC allows.

`helm lint` and `helm template` need only the helm binary (on PATH from e2e/cluster/env.sh, else the cached
build). Rendered objects are validated against the Kubernetes 1.34 schemas with kubernetes-validate.

The install tests use a real API server, but the operator image is not built yet and the local cluster's
nodes are kwok fakes (containers never execute): they check the objects the chart creates, that its pods pass
the restricted Pod Security Standard at admission, that an upgrade with a changed value rolls the operator's
pod template, what uninstall leaves, and what the ServiceAccount may do (`kubectl auth can-i --as`). They do
not check a running operator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from agentscale import rbac
from agentscale.api.models import KIND, AgentWorkflow
from agentscale.api.validation import parse_spec
from agentscale.render import labels as L
from agentscale.render import render_workflow
from operator_support import EXAMPLES, REPO

CHART = REPO / "charts" / "agentscale"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRD_NAME = "agentworkflows.agentscale.io"
RELEASE_NS = "agentscale-system"  # for rendering only
# helm template checks Chart.yaml's kubeVersion against this (a `go install` build of helm defaults to 1.20).
KUBE_VERSION = ["--kube-version", "v1.34.0"]
CLUSTER_DIR = REPO / "e2e" / "cluster"
E2E_LABEL = "agentscale.io/e2e"  # as the namespace fixture labels its namespaces
# Kinds kubernetes-validate has no schema for; each is checked by hand below.
NOT_IN_K8S_SCHEMAS = {"ServiceMonitor"}
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


def resolve_helm() -> str:
    """helm on PATH (e2e/cluster/env.sh puts the cached build first), else the cached build itself."""
    found = shutil.which("helm")
    if found:
        return found
    cached = subprocess.run(
        ["bash", "-c", '. "$1/versions.sh" && agentscale_bin helm', "_", str(CLUSTER_DIR)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    if cached and os.access(cached, os.X_OK):
        return cached
    pytest.fail("no helm: run e2e/cluster/build.sh helm (or . e2e/cluster/env.sh)", pytrace=False)


@dataclass(frozen=True)
class Helm:
    binary: str
    kubeconfig: str | None = None

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ}
        if self.kubeconfig:
            env["KUBECONFIG"] = self.kubeconfig
        return subprocess.run(
            [self.binary, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )

    def __call__(self, *args: str, timeout: float = 120) -> str:
        proc = self.run(*args, timeout=timeout)
        assert proc.returncode == 0, f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        return proc.stdout

    def template(self, *args: str) -> list[dict[str, Any]]:
        out = self("template", "agentscale", str(CHART), "--namespace", RELEASE_NS, *KUBE_VERSION, *args)
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm(resolve_helm())


def _values_args(path: Path | None) -> list[str]:
    return ["--values", str(path)] if path else []


def _pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# ------------------------------------------------------------------------------------------- render only


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint(helm: Helm, values: Path | None) -> None:
    helm("lint", "--strict", str(CHART), *_values_args(values))


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_rendered_objects_are_valid_kubernetes_1_34(helm: Helm, values: Path | None) -> None:
    docs = helm.template(*_values_args(values))
    kinds_seen = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    } <= kinds_seen
    assert "Secret" not in kinds_seen
    for doc in docs:
        if doc["kind"] in NOT_IN_K8S_SCHEMAS:
            continue
        kubernetes_validate.validate(doc, "1.34", strict=True)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_rendered_rbac_is_the_generated_rules(helm: Helm, values: Path | None) -> None:
    docs = helm.template(*_values_args(values))
    assert _one(docs, "ClusterRole")["rules"] == rbac.cluster_rules()
    role = _one(docs, "Role")
    assert role["rules"] == rbac.namespace_rules()
    assert role["metadata"]["namespace"] == RELEASE_NS
    sa = _one(docs, "ServiceAccount")["metadata"]["name"]
    for binding in ("ClusterRoleBinding", "RoleBinding"):
        b = _one(docs, binding)
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NS}]


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_pods_meet_the_restricted_pod_security_standard(helm: Helm, values: Path | None) -> None:
    for name, spec in _pod_specs(helm.template(*_values_args(values))).items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert "privileged" not in sc, name
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name


def test_operator_deployment_runs_standalone_with_health_probes(helm: Helm) -> None:
    docs = helm.template()
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "agentscale")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"] == ["agentscale"]
    assert c["args"] == ["run", "--standalone", "--liveness", "http://0.0.0.0:8080/healthz"]
    assert c["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert spec["serviceAccountName"] == _one(docs, "ServiceAccount")["metadata"]["name"]
    # Selector labels are a stable subset of the pod's labels; version labels stay out of selectors.
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert not {"helm.sh/chart", "app.kubernetes.io/version"} & selector.keys()


def test_optional_parts_are_off_by_default(helm: Helm) -> None:
    docs = helm.template()
    assert [d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "Service")] == ["agentscale"]
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]


def test_redis_when_enabled(helm: Helm) -> None:
    docs = helm.template("--set", "redis.enabled=true")
    svc = next(d for d in docs if d["kind"] == "Service")
    assert svc["metadata"]["name"] == "agentscale-redis"
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "agentscale-redis")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["port"] == 6379
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7.4"


def test_service_monitor_selects_the_workflow_services(helm: Helm) -> None:
    """The ServiceMonitor's selector and port match the Services the operator renders for a workflow."""
    sm = _one(helm.template("--set", "serviceMonitor.enabled=true"), "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = sm["spec"]["endpoints"]
    selector = sm["spec"]["selector"]
    docs = yaml.safe_load_all((EXAMPLES / "recommendation.yaml").read_text())
    example = next(d for d in docs if d and d.get("kind") == KIND)
    wf = AgentWorkflow(
        metadata={"name": example["metadata"]["name"], "namespace": "shop"}, spec=parse_spec(example["spec"])
    )
    services = [o for o in render_workflow(wf) if o["kind"] == "Service"]
    scraped = [s for s in services if any(p["name"] == endpoint["port"] for p in s["spec"]["ports"])]
    assert scraped, "no workflow Service has the ServiceMonitor's port"
    for svc in scraped:
        labels = svc["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items()
        for expr in selector["matchExpressions"]:
            assert expr["operator"] == "Exists" and expr["key"] in labels
    assert selector["matchLabels"] == {"app.kubernetes.io/managed-by": L.MANAGED_BY}
    assert selector["matchExpressions"] == [{"key": L.WORKFLOW_LABEL, "operator": "Exists"}]


@pytest.mark.parametrize(
    "bad",
    ["replicaCount=2", "replicasCount=1", "operator.helthPort=8080", "securityContext.privileged=true"],
)
def test_schema_rejects_bad_values_in_helm(helm: Helm, bad: str) -> None:
    proc = helm.run("template", "agentscale", str(CHART), *KUBE_VERSION, "--set", bad)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------- on a cluster


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
    assert _names(kubectl, "services", ns, sel) == ["agentscale-redis"]
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
    return dep["metadata"]["generation"], {e["name"]: e["value"] for e in c["env"]}


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
        for kind in ("deployments", "replicasets", "services", "serviceaccounts", "roles", "rolebindings"):
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
