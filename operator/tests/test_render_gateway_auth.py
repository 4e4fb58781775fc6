"""The gateway's bearer tokens and limits as rendered: a Secret mounted read-only (no subPath, so rotation
reaches the pod), the variables the gateway reads, and client Services without the metrics port."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import InvalidSpec, parse_spec
from agentscale.drift import drifted_fields
from agentscale.render import render_workflow
from agentscale.render.workers import TOKENS_DIR
from agentscale_worker.auth import MIN_TOKEN_CHARS, TokenStore
from agentscale_worker.config import Settings
from conftest import minimal_spec


def render(name: str = "wf", **gateway: Any) -> list[dict[str, Any]]:
    spec = minimal_spec(gateway=gateway) if gateway else minimal_spec()
    wf = AgentWorkflow(metadata={"name": name, "namespace": "ns"}, spec=parse_spec(spec))
    return render_workflow(wf, "00000000-0000-0000-0000-000000000001")


def gateway_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway"))


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_tokens_are_on_by_default_from_the_workflows_secret() -> None:
    gw = gateway_of(render("shop"))
    pod = gw["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert env_of(gw)["AGENTSCALE_GATEWAY_TOKENS_DIR"] == TOKENS_DIR
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"] == {"secretName": "shop-gateway-tokens", "defaultMode": 0o440}
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    # the whole directory, read-only: a subPath mount would never see a rotated key
    assert mount == {"name": volume["name"], "mountPath": TOKENS_DIR, "readOnly": True}
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]  # mode 0440 readable
    kubernetes_validate.validate(gw, "1.34", strict=True)


def test_the_secret_can_be_named_and_auth_turned_off() -> None:
    named = gateway_of(render(auth={"tokensSecret": "clients"}))
    volumes = named["spec"]["template"]["spec"]["volumes"]
    assert [v["secret"]["secretName"] for v in volumes if "secret" in v] == ["clients"]

    open_gw = gateway_of(render(auth={"enabled": False}))
    pod = open_gw["spec"]["template"]["spec"]
    assert "AGENTSCALE_GATEWAY_TOKENS_DIR" not in env_of(open_gw)
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert [m["name"] for m in pod["containers"][0]["volumeMounts"]] == ["tmp"]


def test_the_rendered_variables_are_what_the_gateway_reads(tmp_path: Any) -> None:
    """The env the operator renders, read by the gateway's own Settings, names the mounted directory and the
    body limit; a token file there as the kubelet writes a Secret key is accepted, a short one is not."""
    env = env_of(gateway_of(render(maxBodyBytes=4 << 20)))
    settings = Settings.from_env(env)
    assert settings.gateway_tokens_dir == TOKENS_DIR
    assert settings.max_body_bytes == 4 << 20
    assert "AGENTSCALE_GATEWAY_MAX_BODY_BYTES" not in env_of(gateway_of(render()))
    (tmp_path / "ci").write_text("x" * MIN_TOKEN_CHARS + "\n")
    (tmp_path / "short").write_text("x" * (MIN_TOKEN_CHARS - 1))
    store = TokenStore(tmp_path)
    assert store.reload() == 1
    assert store.client_of("Bearer " + "x" * MIN_TOKEN_CHARS) == "ci"


@pytest.mark.parametrize(
    ("gateway", "match"),
    [
        ({"maxBodyBytes": 100}, r"spec.gateway.maxBodyBytes"),
        ({"auth": {"tokensSecret": "Bad_Name"}}, r"spec.gateway.auth.tokensSecret"),
        ({"auth": {"tokenSecret": "x"}}, r"spec.gateway.auth.tokenSecret: unknown field; did you mean"),
    ],
)
def test_bad_gateway_fields_are_refused_naming_the_field(gateway: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidSpec, match=match):
        parse_spec(minimal_spec(gateway=gateway))


def test_client_services_carry_no_metrics_port() -> None:
    """Metrics are scraped from the pods (the chart's PodMonitor on the pods' metrics port), so neither the
    gateway's Service nor a model server's exposes them to clients; the pods keep the port."""
    objs = render()
    services = [o for o in objs if o["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"wf-gateway", "wf-m"}
    for svc in services:
        assert "metrics" not in [p["name"] for p in svc["spec"]["ports"]], svc["metadata"]["name"]
    for d in (o for o in objs if o["kind"] == "Deployment"):
        ports = [p["name"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        assert "metrics" in ports, d["metadata"]["name"]


def test_the_secret_volume_as_the_api_server_returns_it_is_not_drift() -> None:
    gw = gateway_of(render())
    live_pod = {**gw["spec"]["template"]["spec"]}
    live_pod["volumes"] = [
        {**v, "secret": {**v["secret"], "optional": False}} if "secret" in v else v
        for v in live_pod["volumes"]
    ]
    live = {**gw, "spec": {**gw["spec"], "template": {**gw["spec"]["template"], "spec": live_pod}}}
    assert drifted_fields(gw, live) == []
    renamed = [
        {**v, "secret": {**v["secret"], "secretName": "other"}} if "secret" in v else v
        for v in live_pod["volumes"]
    ]
    edited = {
        **gw,
        "spec": {
            **gw["spec"],
            "template": {**gw["spec"]["template"], "spec": {**live_pod, "volumes": renamed}},
        },
    }
    assert drifted_fields(gw, edited)
