"""The Helm chart (charts/agentscale) without a cluster: lint, render, and what the rendered objects hold.

`helm lint` and `helm template` need only the helm binary (chart_support.resolve_helm). Rendered objects are
validated against the Kubernetes 1.34 schemas with kubernetes-validate.
"""

from __future__ import annotations

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
from chart_support import CHART, KUBE_VERSION, RELEASE_NS, Helm, resolve_helm
from operator_support import EXAMPLES

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# Kinds kubernetes-validate has no schema for; each is checked by hand below.
NOT_IN_K8S_SCHEMAS = {"ServiceMonitor"}


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
