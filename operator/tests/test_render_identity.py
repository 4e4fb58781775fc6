"""What the workflow's pods run as and may reach, and the limits every pod gets by default."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from agentscale import kinds
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import parse_spec
from agentscale.drift import drifted_fields
from agentscale.render import labels as L
from agentscale.render import render_workflow
from agentscale.render.pods import POD_SECURITY
from conftest import minimal_spec


def render(name: str = "wf", **overrides: Any) -> list[dict[str, Any]]:
    wf = AgentWorkflow(metadata={"name": name, "namespace": "ns"}, spec=parse_spec(minimal_spec(**overrides)))
    return render_workflow(wf, "00000000-0000-0000-0000-000000000001")


def of_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_specs(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: d["spec"]["template"]["spec"] for n, d in of_kind(objs, "Deployment").items()}


def containers(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for p in pod_specs(objs).values() for c in p["containers"] + p.get("initContainers", [])]


# ------------------------------------------------------------------------------------------ ServiceAccount


def test_every_pod_runs_as_the_workflows_own_account_without_a_token() -> None:
    objs = render()
    (account,) = of_kind(objs, "ServiceAccount").values()
    assert account["metadata"]["name"] == "wf-workflow"
    assert account["automountServiceAccountToken"] is False
    specs = pod_specs(objs)
    assert set(specs) == {"wf-a", "wf-b", "wf-m", "wf-gateway"}
    for pod in specs.values():
        assert pod["serviceAccountName"] == "wf-workflow"
        assert pod["automountServiceAccountToken"] is False


def test_a_token_is_mounted_only_when_the_spec_asks() -> None:
    objs = render(serviceAccount={"automountToken": True})
    assert of_kind(objs, "ServiceAccount")["wf-workflow"]["automountServiceAccountToken"] is True
    assert all(p["automountServiceAccountToken"] is True for p in pod_specs(objs).values())


def test_an_existing_account_is_used_and_not_rendered() -> None:
    objs = render(serviceAccount={"name": "team-runner"})
    assert of_kind(objs, "ServiceAccount") == {}
    for pod in pod_specs(objs).values():
        assert pod["serviceAccountName"] == "team-runner"
        assert pod["automountServiceAccountToken"] is False


# ------------------------------------------------------------------------------------------ NetworkPolicy


def _ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in rule.get("ports", [])}


def test_only_the_gateway_takes_traffic_from_outside_the_workflow() -> None:
    policies = of_kind(render(queue={"redisUrl": "redis://redis.data:6380/0"}), "NetworkPolicy")
    assert set(policies) == {"wf-workflow", "wf-gateway"}
    base = policies["wf-workflow"]["spec"]
    assert base["podSelector"] == {"matchLabels": {L.WORKFLOW_LABEL: "wf"}}
    assert base["policyTypes"] == ["Ingress", "Egress"]
    own, metrics = base["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {L.WORKFLOW_LABEL: "wf"}}}]}  # any port, own pods
    assert metrics["from"] == [{"namespaceSelector": {}}]  # any pod of the cluster, metrics ports only
    assert _ports(metrics) == {("TCP", 9090), ("TCP", 8002)}
    dns, redis, models = base["egress"]
    assert _ports(dns) == {("UDP", 53), ("TCP", 53)}
    assert _ports(redis) == {("TCP", 6380)} and "to" not in redis  # the URL's port, any address
    sel = {L.WORKFLOW_LABEL: "wf", L.COMPONENT_LABEL: "model"}
    assert models == {"to": [{"podSelector": {"matchLabels": sel}}], "ports": _tcp_list(8000, 8001)}
    gateway = policies["wf-gateway"]["spec"]
    assert gateway["podSelector"]["matchLabels"] == L.selector_labels(
        AgentWorkflow(metadata={"name": "wf"}, spec=parse_spec(minimal_spec())), L.GATEWAY
    )
    assert gateway["policyTypes"] == ["Ingress"]
    assert gateway["ingress"] == [{"ports": _tcp_list(8080)}]  # no `from`: any source


def _tcp_list(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def test_peers_narrow_the_policies_and_extra_egress_is_added() -> None:
    prom = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    redis_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}}}
    llm = {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    objs = render(
        queue={"redisSecretRef": {"name": "redis", "key": "url"}},
        networkPolicy={
            "gatewayFrom": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
            "metricsFrom": [prom],
            "redisTo": [redis_ns],
            "extraEgress": [llm],
        },
    )
    policies = of_kind(objs, "NetworkPolicy")
    base = policies["wf-workflow"]["spec"]
    assert base["ingress"][1]["from"] == [prom]
    assert base["egress"][1] == {"ports": _tcp_list(6379), "to": [redis_ns]}  # secret: Redis' default port
    assert base["egress"][-1] == llm
    assert policies["wf-gateway"]["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app": "frontend"}}}
    ]
    for obj in policies.values():
        kubernetes_validate.validate(obj, "1.34", strict=True)


def test_redis_port_can_be_set() -> None:
    base = of_kind(render(networkPolicy={"redisPort": 7000}), "NetworkPolicy")["wf-workflow"]["spec"]
    assert base["egress"][1]["ports"] == _tcp_list(7000)


def test_policies_can_be_turned_off_and_follow_the_gateway() -> None:
    assert of_kind(render(networkPolicy={"enabled": False}), "NetworkPolicy") == {}
    assert set(of_kind(render(gateway={"enabled": False}), "NetworkPolicy")) == {"wf-workflow"}
    no_models = of_kind(render(models=[], steps=[{"name": "a"}]), "NetworkPolicy")["wf-workflow"]["spec"]
    assert len(no_models["egress"]) == 2  # DNS and Redis only


# ------------------------------------------------------------------------------------------ defaults


def test_memory_limits_default_and_the_spec_overrides_them() -> None:
    objs = render(
        steps=[
            {"name": "a", "model": "m"},
            {"name": "b", "resources": {"requests": {"memory": "3Gi"}}},
            {"name": "c", "resources": {"limits": {"memory": "256Mi", "cpu": "2"}}},
        ]
    )
    specs = pod_specs(objs)
    limits = {n: p["containers"][0]["resources"]["limits"] for n, p in specs.items()}
    assert limits["wf-a"] == {"memory": "1Gi"}
    assert limits["wf-b"] == {"memory": "3Gi"}  # never below the request
    assert limits["wf-c"] == {"memory": "256Mi", "cpu": "2"}
    assert limits["wf-gateway"] == {"memory": "1Gi"}
    assert limits["wf-m"] == {"memory": "16Gi"}
    assert specs["wf-m"]["initContainers"][0]["resources"]["limits"] == {"memory": "1Gi"}


def test_probe_timeouts_default_and_the_spec_overrides_them() -> None:
    objs = render(
        steps=[{"name": "a", "model": "m", "probeTimeoutSeconds": 9}, {"name": "b"}],
        gateway={"probeTimeoutSeconds": 3},
        models=[{"name": "m", "modelRepository": "/models", "probeTimeoutSeconds": 20}],
    )
    expected = {"wf-a": 9, "wf-b": 5, "wf-gateway": 3, "wf-m": 20}
    for name, pod in pod_specs(objs).items():
        probes = [v for c in pod["containers"] for k, v in c.items() if k.endswith("Probe")]
        assert probes and {p["timeoutSeconds"] for p in probes} == {expected[name]}, name


def test_scratch_volumes_have_size_limits_the_spec_can_change() -> None:
    objs = render(
        steps=[{"name": "a", "model": "m", "tmpSizeLimit": "256Mi"}, {"name": "b"}],
        models=[{"name": "m", "modelRepository": "/models", "modelVolumeSizeLimit": "200Gi"}],
    )
    sizes = {
        (n, v["name"]): v["emptyDir"]["sizeLimit"]
        for n, p in pod_specs(objs).items()
        for v in p["volumes"]
        if "emptyDir" in v
    }
    assert sizes == {
        ("wf-a", "tmp"): "256Mi",
        ("wf-b", "tmp"): "1Gi",
        ("wf-gateway", "tmp"): "1Gi",
        ("wf-m", "tmp"): "1Gi",
        ("wf-m", "models"): "200Gi",
    }


def test_pods_run_as_a_high_uid() -> None:
    assert POD_SECURITY["runAsUser"] >= 10000 and POD_SECURITY["runAsGroup"] >= 10000


def test_bad_sizes_are_refused_naming_the_field() -> None:
    from agentscale.api.validation import InvalidSpec

    with pytest.raises(
        InvalidSpec, match=r"spec.models\[0\].modelVolumeSizeLimit: '64 GB' is not a Kubernetes"
    ):
        parse_spec(
            minimal_spec(models=[{"name": "m", "modelRepository": "/m", "modelVolumeSizeLimit": "64 GB"}])
        )


# ------------------------------------------------------------------------------------------ the kinds table


def test_every_rendered_kind_is_owned_and_identity_goes_first() -> None:
    objs = render(steps=[{"name": "a", "model": "m", "scaling": {"mode": "hpa", "maxReplicas": 3}}])
    rendered = {o["kind"] for o in objs}
    assert rendered <= {k.kind for k in kinds.OWNED}
    assert {"ServiceAccount", "NetworkPolicy"} <= rendered
    assert kinds.owned("ServiceAccount").apply_first and kinds.owned("NetworkPolicy").apply_first
    assert [o["kind"] for o in objs[:3]] == ["ServiceAccount", "NetworkPolicy", "NetworkPolicy"]


def test_identity_objects_as_the_api_server_returns_them_are_not_drift() -> None:
    """A live copy with what the API server adds (uid, resourceVersion, status-free) compares clean, and a
    hand edit of a field we render is found."""
    for obj in [o for o in render() if o["kind"] in ("ServiceAccount", "NetworkPolicy")]:
        live = {**obj, "metadata": {**obj["metadata"], "uid": "x", "resourceVersion": "7", "generation": 1}}
        assert drifted_fields(obj, live) == []
    account = of_kind(render(), "ServiceAccount")["wf-workflow"]
    assert drifted_fields(account, {**account, "automountServiceAccountToken": True}) == [
        "automountServiceAccountToken"
    ]
    policy = of_kind(render(), "NetworkPolicy")["wf-gateway"]
    opened = {**policy, "spec": {**policy["spec"], "podSelector": {}}}
    assert drifted_fields(policy, opened) == ["spec.podSelector.matchLabels"]


def test_step_readiness_follows_the_redis_connection() -> None:
    """The worker's metrics server answers /readyz from its Redis connection; liveness stays /healthz."""
    for name, pod in pod_specs(render()).items():
        worker = pod["containers"][0]
        if name in ("wf-a", "wf-b"):
            assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
            assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
