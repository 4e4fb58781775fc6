"""The executor: order, rejected objects reported (not retried forever), transient errors raised."""

from __future__ import annotations

from typing import Any

import pytest
from agentscale.kube import ApiError, object_path
from agentscale.reconcile import ExistingChild, Plan, execute


class FakeClient:
    """Stands in for KubeClient in this unit test only: records calls, fails on request."""

    def __init__(self, fail: dict[str, ApiError] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail or {}

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        self.calls.append(("apply", name))
        if name in self.fail:
            raise self.fail[name]
        return obj

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self.calls.append(("delete", f"{kind}/{name}"))
        return True

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.calls.append(("scale", f"{name}={replicas}"))


def obj(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ns"}}


def test_object_paths() -> None:
    assert object_path("v1", "ConfigMap", "ns", "c") == "/api/v1/namespaces/ns/configmaps/c"
    assert object_path("apps/v1", "Deployment", "ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert (
        object_path("agentscale.io/v1alpha1", "AgentWorkflow", "ns", "w")
        == "/apis/agentscale.io/v1alpha1/namespaces/ns/agentworkflows/w"
    )


async def test_configs_and_services_go_first_and_rejections_are_collected() -> None:
    bad = ApiError(422, {"message": "spec.template: Invalid value"}, "apply")
    client = FakeClient({"Deployment/d2": bad})
    plan = Plan(
        apply=[obj("Deployment", "d1"), obj("ConfigMap", "c"), obj("Deployment", "d2"), obj("Service", "s")],
        prune=[ExistingChild("Deployment", "old", "h")],
    )
    out = await execute(client, "ns", plan)  # type: ignore[arg-type]
    assert {c[1] for c in client.calls[:2]} == {"ConfigMap/c", "Service/s"}
    assert sorted(out.applied) == ["ConfigMap/c", "Deployment/d1", "Service/s"]
    assert out.rejected == ["Deployment/d2: spec.template: Invalid value"]
    assert out.pruned == ["Deployment/old"]
    assert not any(call[0] == "scale" for call in client.calls)  # replicas are the resource controller's


async def test_transient_errors_propagate_for_retry() -> None:
    client = FakeClient({"Deployment/d": ApiError(503, "unavailable", "apply")})
    with pytest.raises(ApiError):
        await execute(client, "ns", Plan(apply=[obj("Deployment", "d")]))  # type: ignore[arg-type]
