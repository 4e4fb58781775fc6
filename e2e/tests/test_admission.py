"""Admission against the real API server: what the CRD refuses at apply time, with which words, and the
ServiceAccount and NetworkPolicies the operator renders (owned, so deleted with their workflow)."""

from __future__ import annotations

import json
from typing import Any

from operator_support import CRDS, OWNED_KINDS, get_wf, wait_condition, workflow


def _apply(kubectl: Any, namespace: str, doc: dict[str, Any]) -> Any:
    """``kubectl apply`` (strict field validation, kubectl's default); the completed process."""
    return kubectl.run("-n", namespace, "apply", "-f", "-", input=json.dumps(doc))


def test_a_name_that_cannot_prefix_every_child_is_refused_with_advice(
    kubectl: Any, crd: None, namespace: str
) -> None:
    for name, suggestion in (("with.dot", "'with-dot'"), ("9lives", "'wf-9lives'")):
        proc = _apply(kubectl, namespace, workflow(name, [{"name": "a"}]))
        assert proc.returncode != 0, f"{name} was stored"
        assert f"metadata.name '{name}' cannot prefix the workflow's Service names" in proc.stderr
        assert "DNS-1035" in proc.stderr and f"use e.g. {suggestion}" in proc.stderr
    too_long = "w" * 55
    proc = _apply(kubectl, namespace, workflow(too_long, [{"name": "a"}]))
    assert proc.returncode != 0 and "metadata.name must be at most 54 characters" in proc.stderr
    assert _apply(kubectl, namespace, workflow("w" * 54, [{"name": "a"}])).returncode == 0
    assert kubectl.run("-n", namespace, "get", "agentworkflow", "with.dot").returncode != 0


def test_a_redis_url_with_credentials_is_refused_pointing_to_the_secret(
    kubectl: Any, crd: None, namespace: str
) -> None:
    doc = workflow("creds", [{"name": "a"}])
    doc["spec"]["queue"] = {"redisUrl": "redis://:hunter2@redis:6379/0"}
    proc = _apply(kubectl, namespace, doc)
    assert proc.returncode != 0
    assert "spec.queue.redisUrl" in proc.stderr and "must not carry credentials" in proc.stderr
    assert "spec.queue.redisSecretRef" in proc.stderr
    assert "hunter2" not in proc.stderr


def test_bad_values_are_refused_with_advice_and_misspelt_fields_by_name(
    kubectl: Any, crd: None, namespace: str
) -> None:
    doc = workflow("advice", [{"name": "a"}], [{"name": "m", "modelRepository": "models"}])
    proc = _apply(kubectl, namespace, doc)
    assert proc.returncode != 0
    assert "spec.models[0].modelRepository" in proc.stderr and "absolute path inside the image" in proc.stderr
    assert "should match" not in proc.stderr
    # The structural schema would prune an unknown field; kubectl's strict field validation refuses it
    # first, naming it (the API server has no "did you mean": `agentscale validate` has).
    typo = workflow("typo", [{"name": "a", "concurency": 3}])
    proc = _apply(kubectl, namespace, typo)
    assert proc.returncode != 0 and 'unknown field "spec.steps[0].concurency"' in proc.stderr


def test_identity_and_network_policies_are_rendered_owned_and_collected(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    doc = workflow("guarded", [{"name": "a", "model": "m"}], [{"name": "m", "modelRepository": "/models"}])
    kubectl.apply(doc, namespace=namespace)
    wf = wait_condition(kubectl, wait_for, namespace, "guarded", "Ready", "True", timeout=180)
    uid = wf["metadata"]["uid"]

    account = kubectl.json("-n", namespace, "get", "serviceaccount", "guarded-workflow")
    assert account["automountServiceAccountToken"] is False
    policies = {
        p["metadata"]["name"]: p for p in kubectl.json("-n", namespace, "get", "networkpolicies")["items"]
    }
    assert set(policies) == {"guarded-workflow", "guarded-gateway"}
    for obj in [account, *policies.values()]:
        refs = obj["metadata"].get("ownerReferences") or []
        assert [(r["uid"], r.get("controller")) for r in refs] == [(uid, True)], obj["metadata"]["name"]

    pods = kubectl.json("-n", namespace, "get", "pods", "-l", "agentscale.io/workflow=guarded")["items"]
    assert pods
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "guarded-workflow"
        assert pod["spec"]["automountServiceAccountToken"] is False
        mounts = [m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])]
        assert "/var/run/secrets/kubernetes.io/serviceaccount" not in mounts

    # Turning the policies off removes them; the rest stays.
    kubectl(
        "-n",
        namespace,
        "patch",
        "agentworkflow",
        "guarded",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"networkPolicy": {"enabled": False}}}),
    )
    wait_for(
        lambda: kubectl.json("-n", namespace, "get", "networkpolicies")["items"] == [],
        timeout=60,
        message="NetworkPolicies pruned",
    )
    assert get_wf(kubectl, namespace, "guarded")["metadata"]["generation"] == 2

    kubectl("-n", namespace, "delete", "agentworkflow", "guarded")

    def collected() -> bool:
        left = kubectl.json("-n", namespace, "get", OWNED_KINDS, "-l", "agentscale.io/workflow=guarded")
        return left["items"] == []

    wait_for(collected, timeout=120, message="garbage collection of the ServiceAccount and the rest")


def test_the_installed_crd_is_the_committed_one(kubectl: Any, crd: None) -> None:
    """The rules above are the committed CRD's (the fixture applied crds/)."""
    live = kubectl.json("get", "crd", "agentworkflows.agentscale.io")
    root = live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert any("DNS-1035" in r["message"] for r in root["x-kubernetes-validations"])
    assert CRDS.is_dir()


GOOD_QUANTITIES = ["500m", "2", 2, 0, "1.5Gi", "512Mi", "1e3", ".5", "+1k", "100n"]
BAD_QUANTITIES = ["banana", "-1", "1GB", "1 Gi", "1e", "1.2.3", "Gi", "1Ki1", "0x10", -2]


def test_quantities_are_judged_by_the_api_server_as_by_the_operator(
    kubectl: Any, crd: None, namespace: str
) -> None:
    """The CRD checks quantities with the API server's own parser (CEL isQuantity); the operator's
    parse_quantity agrees on every value here, and a refusal reads as advice."""
    from agentscale.api.models import parse_quantity

    def server_accepts(value: Any) -> tuple[bool, str]:
        doc = workflow("q", [{"name": "a", "resources": {"limits": {"memory": value}}}])
        proc = kubectl.run("-n", namespace, "apply", "--dry-run=server", "-f", "-", input=json.dumps(doc))
        return proc.returncode == 0, proc.stderr

    for value in GOOD_QUANTITIES:
        assert parse_quantity(value) is not None
        ok, err = server_accepts(value)
        assert ok, f"{value!r}: {err}"
    for value in BAD_QUANTITIES:
        assert parse_quantity(value) is None
        ok, err = server_accepts(value)
        assert not ok, f"{value!r} was accepted"
        assert "must be a non-negative Kubernetes quantity" in err and "should match" not in err, err
