"""The gateway's bearer tokens on a real API server: the gateway Deployment mounts the tokens Secret
(read-only, no subPath) whether or not it exists, the client Services carry no metrics port, auth can be
turned off, and the CRD refuses bad gateway fields naming them.

What a missing Secret does to the pod is the kubelet's: on a real node the pod waits in ContainerCreating and
the kubelet posts FailedMount Events, which status reads as GatewayTokensMissing. kwok's nodes mark the pod
Running and post no FailedMount (the first test records which it saw), so that logic is tested from recorded
objects in operator/tests/test_gateway_tokens_missing.py."""

from __future__ import annotations

import json
from typing import Any

from operator_support import get_wf, wait_condition, workflow

TOKENS_DIR = "/var/run/agentscale/gateway-tokens"


def gateway_deployment(kubectl: Any, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.json("-n", namespace, "get", "deployment", f"{name}-gateway")


def tokens_volume(deployment: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    """(secret volume, its mount, AGENTSCALE_GATEWAY_TOKENS_DIR) of the gateway's pod template."""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volume = next((v for v in pod.get("volumes") or [] if "secret" in v), None)
    mount = next(
        (m for m in container.get("volumeMounts") or [] if volume and m["name"] == volume["name"]), None
    )
    env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
    return volume, mount, env.get("AGENTSCALE_GATEWAY_TOKENS_DIR", "")


def test_the_gateway_mounts_the_tokens_secret_the_user_creates(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    kubectl.apply(
        workflow("shop", [{"name": "a", "model": "m"}], [{"name": "m", "modelRepository": "/m"}]),
        namespace=namespace,
    )
    dep = wait_for(
        lambda: gateway_deployment(kubectl, namespace, "shop"), timeout=60, message="gateway Deployment"
    )
    volume, mount, tokens_dir = tokens_volume(dep)
    assert volume is not None and volume["secret"]["secretName"] == "shop-gateway-tokens"
    assert volume["secret"]["defaultMode"] == 0o440
    assert mount == {"name": volume["name"], "mountPath": TOKENS_DIR, "readOnly": True}  # no subPath
    assert tokens_dir == TOKENS_DIR

    # The operator has no access to Secrets: nothing was created for the user.
    assert kubectl.run("-n", namespace, "get", "secret", "shop-gateway-tokens").returncode != 0

    # Clients reach the HTTP port only; metrics are scraped from the pods.
    for svc in ("shop-gateway", "shop-m"):
        ports = [p["name"] for p in kubectl.json("-n", namespace, "get", "service", svc)["spec"]["ports"]]
        assert "metrics" not in ports, (svc, ports)

    # The pods carry the volume as the API server stored it. What the node made of the missing Secret:
    pods = wait_for(
        lambda: kubectl.json("-n", namespace, "get", "pods", "-l", "agentscale.io/component=gateway")[
            "items"
        ],
        timeout=60,
        message="gateway pod",
    )
    assert any(
        v.get("secret", {}).get("secretName") == "shop-gateway-tokens" for v in pods[0]["spec"]["volumes"]
    )
    mounts = kubectl.json("-n", namespace, "get", "events", "--field-selector", "reason=FailedMount")["items"]
    phase = pods[0]["status"].get("phase")
    print(f"gateway pod phase without the Secret: {phase}; FailedMount events: {len(mounts)}")

    # Creating the Secret, as the docs say, changes nothing the operator renders (it never reads it).
    before = dep["metadata"]["generation"]
    kubectl(
        "-n", namespace, "create", "secret", "generic", "shop-gateway-tokens", "--from-literal=ci=" + "t" * 32
    )
    wait_condition(kubectl, wait_for, namespace, "shop", "Ready", "True")
    assert gateway_deployment(kubectl, namespace, "shop")["metadata"]["generation"] == before


def test_auth_can_be_turned_off_and_bad_fields_are_refused(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    doc = workflow("open", [{"name": "a"}])
    doc["spec"]["gateway"] = {"auth": {"enabled": False}, "maxBodyBytes": 4 << 20}
    kubectl.apply(doc, namespace=namespace)

    def rendered_open() -> dict[str, Any] | None:
        dep = gateway_deployment(kubectl, namespace, "open")
        return dep if tokens_volume(dep) == (None, None, "") else None

    dep = wait_for(rendered_open, timeout=60, message="gateway Deployment without tokens")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTSCALE_GATEWAY_MAX_BODY_BYTES"] == str(4 << 20)

    # Turned on again (the default): the volume comes back with a rollout, named by the spec.
    doc["spec"]["gateway"] = {"auth": {"tokensSecret": "clients"}}
    kubectl.apply(doc, namespace=namespace)

    def rendered_with(secret: str) -> dict[str, Any] | None:
        volume = tokens_volume(gateway_deployment(kubectl, namespace, "open"))[0]
        return volume if volume and volume["secret"]["secretName"] == secret else None

    wait_for(lambda: rendered_with("clients"), timeout=60, message="gateway Deployment with tokens")

    for gateway, field in (
        ({"auth": {"tokensSecret": "Not_A_Name"}}, "spec.gateway.auth.tokensSecret"),
        ({"maxBodyBytes": 10}, "spec.gateway.maxBodyBytes"),
    ):
        bad = workflow("bad", [{"name": "a"}])
        bad["spec"]["gateway"] = gateway
        proc = kubectl.run("-n", namespace, "apply", "-f", "-", input=json.dumps(bad))
        assert proc.returncode != 0 and field in proc.stderr, proc.stderr
    assert get_wf(kubectl, namespace, "open")["spec"]["gateway"]["auth"]["tokensSecret"] == "clients"


def test_a_missing_secret_reported_by_the_kubelet_is_in_status(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    """The operator's watch of FailedMount Events, through a real API server. kwok runs pods without their
    Secret, so the test keeps the gateway pod from starting (a node selector nothing matches) and posts the
    Event the kubelet posts for a missing secret volume."""
    doc = workflow("shop", [{"name": "a"}])
    doc["spec"]["gateway"] = {"placement": {"nodeSelector": {"agentscale.io/pool": "nowhere"}}}
    kubectl.apply(doc, namespace=namespace)
    pod = wait_for(
        lambda: kubectl.json("-n", namespace, "get", "pods", "-l", "agentscale.io/component=gateway")[
            "items"
        ],
        timeout=60,
        message="gateway pod",
    )[0]["metadata"]["name"]
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pod}.failedmount"},
            "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "apiVersion": "v1"},
            "reason": "FailedMount",
            "message": 'MountVolume.SetUp failed for volume "gateway-tokens" : secret "shop-gateway-tokens" '
            "not found",
            "source": {"component": "kubelet", "host": "node-1"},
            "type": "Warning",
        },
        namespace=namespace,
    )
    wf = wait_condition(kubectl, wait_for, namespace, "shop", "Degraded", "True")
    degraded = next(c for c in wf["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "GatewayTokensMissing", degraded
    assert f"kubectl -n {namespace} create secret generic shop-gateway-tokens" in degraded["message"]
    warnings = kubectl.json(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        "reason=GatewayTokensMissing,involvedObject.name=shop",
    )["items"]
    assert warnings and warnings[0]["type"] == "Warning"

    # The pod starts (here: the placement goes; on a real node: the Secret is created): the reason clears
    # although the kubelet's Event stays.
    doc["spec"]["gateway"] = {}
    kubectl.apply(doc, namespace=namespace)
    wait_condition(kubectl, wait_for, namespace, "shop", "Degraded", "False")
    assert kubectl.run("-n", namespace, "get", "event", f"{pod}.failedmount").returncode == 0
