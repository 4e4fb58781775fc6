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
from agentscale.render import render_workflow
from agentscale.resource_controller.leader import new_identity, operator_namespace
from agentscale.resource_controller.promql import SCRAPE_RELABEL_CONFIGS, Windows, recording_rules
from chart_support import CHART, KUBE_VERSION, RELEASE_NS, Helm, resolve_helm
from operator_support import EXAMPLES

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# Kinds kubernetes-validate has no schema for; each is checked by hand below.
NOT_IN_K8S_SCHEMAS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm(resolve_helm())


def _values_args(path: Path | None) -> list[str]:
    return ["--values", str(path)] if path else []


def _pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}


def _operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    return dep


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
    assert ("PodDisruptionBudget" in kinds_seen) == (_operator(docs)["spec"]["replicas"] > 1)
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
    dep = _operator(docs)
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"] == ["agentscale"]
    assert c["args"] == ["run", "--standalone", "--liveness", "http://0.0.0.0:8080/healthz"]
    assert c["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert spec["serviceAccountName"] == _one(docs, "ServiceAccount")["metadata"]["name"]
    # Selector labels are a stable subset of the pod's labels; version labels stay out of selectors.
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert not {"helm.sh/chart", "app.kubernetes.io/version"} & selector.keys()


def test_optional_parts_are_off_by_default(helm: Helm) -> None:
    docs = helm.template()
    names = sorted(d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "Service"))
    assert names == ["agentscale", "agentscale-metrics"]  # the operator and its /metrics Service
    assert not [d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")]


def test_redis_when_enabled(helm: Helm) -> None:
    docs = helm.template("--set", "redis.enabled=true")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] != "agentscale-metrics")
    assert svc["metadata"]["name"] == "agentscale-redis"
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "agentscale-redis")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["port"] == 6379
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7.4"


def test_pod_monitor_scrapes_every_workflow_pod_as_the_resource_controller_reads(helm: Helm) -> None:
    """The PodMonitor selects every pod template the operator renders for a workflow (steps, gateway, Triton),
    on a container port it has, and relabels the way the resource controller maps series to workflows."""
    pm = _one(helm.template("--set", "serviceMonitor.enabled=true"), "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    selector = pm["spec"]["selector"]
    docs = yaml.safe_load_all((EXAMPLES / "recommendation.yaml").read_text())
    example = next(d for d in docs if d and d.get("kind") == KIND)
    wf = AgentWorkflow(
        metadata={"name": example["metadata"]["name"], "namespace": "shop"}, spec=parse_spec(example["spec"])
    )
    deployments = [o for o in render_workflow(wf) if o["kind"] == "Deployment"]
    assert len(deployments) >= 5  # 3 steps, 2 model servers, the gateway
    for dep in deployments:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items(), dep["metadata"]["name"]
        for expr in selector["matchExpressions"]:
            assert expr["operator"] == "Exists" and expr["key"] in labels
        ports = [
            p.get("name") for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
        ]
        assert endpoint["port"] in ports, dep["metadata"]["name"]
    # The same target labels as promql.SCRAPE_RELABEL_CONFIGS (kubernetes_sd role pod), in camelCase.
    expected = {
        (tuple(r["source_labels"]), r["target_label"], r.get("regex"))
        for r in SCRAPE_RELABEL_CONFIGS
        if r.get("target_label") in ("namespace", "workflow", "model", "pod")
    }
    got = {(tuple(r["sourceLabels"]), r["targetLabel"], r.get("regex")) for r in endpoint["relabelings"]}
    assert got == expected


def test_operator_metrics_service_and_service_monitor(helm: Helm) -> None:
    docs = helm.template("--set", "serviceMonitor.enabled=true")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "agentscale-metrics")
    sm = _one(docs, "ServiceMonitor")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTSCALE_METRICS_PORT"] == "9090"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    off = helm.template("--set", "serviceMonitor.enabled=true", "--set", "operator.metricsPort=0")
    assert not [
        d for d in off if d["kind"] in ("ServiceMonitor",) or d["metadata"]["name"] == "agentscale-metrics"
    ]
    (plain,) = next(d for d in off if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "metrics" not in [p["name"] for p in plain["ports"]]


def test_prometheus_rule_records_every_signal_and_the_operator_reads_the_records(helm: Helm) -> None:
    assert not [d for d in helm.template() if d["kind"] == "PrometheusRule"]
    docs = helm.template(
        "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.interval=10s",
        "--set", "prometheusRule.labels.release=kube-prometheus",
    )  # fmt: skip
    rule = _one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    want = recording_rules(Windows(), interval_s=10)
    assert rule["spec"] == want  # the generated file, with the interval from the values
    (container,) = _operator(docs)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTSCALE_RC_RECORDED_SIGNALS"] == "1"
    (plain,) = _operator(helm.template())["spec"]["template"]["spec"]["containers"]
    assert "AGENTSCALE_RC_RECORDED_SIGNALS" not in {e["name"] for e in plain["env"]}


def test_operator_settings_become_its_environment(helm: Helm) -> None:
    docs = helm.template(
        "--set",
        "operator.prometheusUrl=http://prometheus.monitoring:9090",
        "--set",
        "operator.allowedImagePrefixes={registry.example.com/ml,nvcr.io/nvidia}",
        "--set-json",
        'operator.extraEnv=[{"name":"AGENTSCALE_RC_CYCLE_SECONDS","value":"5"}]',
    )
    (container,) = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTSCALE_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    assert env["AGENTSCALE_ALLOWED_IMAGE_PREFIXES"] == "registry.example.com/ml,nvcr.io/nvidia"
    assert env["AGENTSCALE_RC_CYCLE_SECONDS"] == "5"
    default = next(d for d in helm.template() if d["kind"] == "Deployment")
    names = [e["name"] for e in default["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "AGENTSCALE_PROMETHEUS_URL" not in names and "AGENTSCALE_ALLOWED_IMAGE_PREFIXES" not in names


def test_two_replicas_one_leading_roll_without_losing_a_standby(helm: Helm) -> None:
    """Two replicas by default, spread across nodes; a rollout starts a pod before stopping one; the Lease's
    identity is the pod's name (downward API) and the Lease lives in the release namespace."""
    dep = _operator(helm.template())
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    spec = dep["spec"]["template"]["spec"]
    selector = dep["spec"]["selector"]["matchLabels"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": selector},
    }
    (c,) = spec["containers"]
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert fields == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # What the operator makes of them, as the kubelet would fill them in:
    pod_env = {"POD_NAME": "agentscale-7d9f-x2x", "POD_NAMESPACE": RELEASE_NS, "HOSTNAME": "other"}
    assert new_identity(pod_env).startswith("agentscale-7d9f-x2x_")
    assert operator_namespace(pod_env) == _one(helm.template(), "Role")["metadata"]["namespace"]


def test_pod_disruption_budget_keeps_one_replica_through_a_drain(helm: Helm) -> None:
    docs = helm.template("--set", "replicaCount=3")
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == _operator(docs)["spec"]["selector"]["matchLabels"]
    assert pdb["metadata"]["namespace"] == RELEASE_NS
    for off in (["replicaCount=1"], ["replicaCount=0"], ["podDisruptionBudget.enabled=false"]):
        docs = helm.template("--set", *off)
        assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"], off


def test_required_anti_affinity_rolls_without_a_surge_pod(helm: Helm) -> None:
    dep = _operator(helm.template("--set", "podAntiAffinity=required"))
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    spec = dep["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert (
        "affinity"
        not in _operator(helm.template("--set", "podAntiAffinity=none"))["spec"]["template"]["spec"]
    )


@pytest.mark.parametrize(
    "bad",
    [
        "replicaCount=-1",
        "podAntiAffinity=sometimes",
        "podDisruptionBudget.minAvailable=2",
        "replicasCount=1",
        "operator.helthPort=8080",
        "securityContext.privileged=true",
    ],
)
def test_schema_rejects_bad_values_in_helm(helm: Helm, bad: str) -> None:
    proc = helm.run("template", "agentscale", str(CHART), *KUBE_VERSION, "--set", bad)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
