"""Rendering: golden children per example, Kubernetes 1.34 validity, and the rules children follow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import parse_spec
from agentscale.render import labels as L
from agentscale.render import render_workflow, spec_hash, workflow_gpus
from agentscale.render.triton import config_pbtxt
from conftest import load_workflow, minimal_spec
from tests_paths import GOLDEN

UID = "00000000-0000-0000-0000-000000000001"


def render_doc(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return render_workflow(load_workflow(doc), UID)


def wf_from(spec: dict[str, Any], name: str = "wf") -> AgentWorkflow:
    return AgentWorkflow(metadata={"name": name, "namespace": "ns"}, spec=parse_spec(spec))


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_golden(example: tuple[Path, dict[str, Any]]) -> None:
    path, doc = example
    rendered = yaml.safe_dump_all(render_doc(doc), sort_keys=False)
    golden = GOLDEN / f"{path.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), f"missing {golden}: run UPDATE_GOLDEN=1 pytest operator/tests/test_render.py"
    assert rendered == golden.read_text(), f"{path.name} renders differently from {golden.name}"


def test_every_child_is_valid_for_kubernetes_1_34(example: tuple[Path, dict[str, Any]]) -> None:
    _, doc = example
    for obj in render_doc(doc):
        kubernetes_validate.validate(obj, "1.34", strict=True)


def test_children_are_owned_labelled_and_hashed(example: tuple[Path, dict[str, Any]]) -> None:
    _, doc = example
    for obj in render_doc(doc):
        meta = obj["metadata"]
        assert meta["ownerReferences"][0]["uid"] == UID
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "agentscale"
        assert meta["labels"][L.WORKFLOW_LABEL] == doc["metadata"]["name"]
        digest = meta["annotations"].pop(L.HASH_ANNOTATION)
        if not meta["annotations"]:
            meta.pop("annotations")
        meta.pop("ownerReferences")
        assert digest == spec_hash(obj)


def test_restricted_pod_security(example: tuple[Path, dict[str, Any]]) -> None:
    _, doc = example
    for dep in by_kind(render_doc(doc), "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]


def test_gpu_pinning() -> None:
    spec = minimal_spec(
        models=[
            {
                "name": "whole",
                "modelRepository": "/m",
                "gpu": {"count": 2, "product": "NVIDIA-H100-80GB-HBM3"},
            },
            {"name": "slice", "modelRepository": "/m", "gpu": {"migProfile": "1g.10gb"}},
            {"name": "shared", "modelRepository": "/m", "gpu": {"count": 1, "sharing": "TimeSliced"}},
            {"name": "cpu", "modelRepository": "/m"},
        ],
        steps=[{"name": "s", "model": "whole"}],
    )
    deps = by_kind(render_workflow(wf_from(spec)), "Deployment")
    whole = deps["wf-whole"]["spec"]["template"]["spec"]
    assert whole["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 2, "memory": "16Gi"}
    assert whole["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in whole["tolerations"]
    assert whole["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    mig = deps["wf-slice"]["spec"]["template"]["spec"]
    assert mig["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": 1, "memory": "16Gi"}
    assert "nodeSelector" not in mig
    shared = deps["wf-shared"]["spec"]["template"]["spec"]
    assert shared["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu.shared": 1, "memory": "16Gi"}
    cpu = deps["wf-cpu"]["spec"]["template"]["spec"]
    assert "tolerations" not in cpu and cpu["containers"][0]["resources"]["limits"] == {"memory": "16Gi"}
    # GPU Deployments replace in place (no surge into a full GPU pool).
    assert deps["wf-whole"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_scaling_objects() -> None:
    spec = minimal_spec(
        steps=[
            {"name": "a", "model": "m", "next": ["b", "c"], "scaling": {"mode": "hpa", "maxReplicas": 5}},
            {"name": "b", "scaling": {"mode": "fixed", "replicas": 3, "maxReplicas": 3}},
            {"name": "c", "scaling": {"mode": "queue", "minReplicas": 2, "maxReplicas": 2}},
            {"name": "d", "scaling": {"mode": "fixed", "replicas": 1}},
        ]
    )
    objs = render_workflow(wf_from(spec))
    hpas, pdbs, deps = (
        by_kind(objs, "HorizontalPodAutoscaler"),
        by_kind(objs, "PodDisruptionBudget"),
        by_kind(objs, "Deployment"),
    )
    assert set(hpas) == {"wf-a"}
    assert hpas["wf-a"]["spec"]["maxReplicas"] == 5
    assert hpas["wf-a"]["spec"]["scaleTargetRef"]["name"] == "wf-a"
    assert set(pdbs) == {"wf-a", "wf-b", "wf-c"}  # d runs one replica at most
    assert "replicas" not in deps["wf-a"]["spec"]  # owned by the HPA
    assert "replicas" not in deps["wf-c"]["spec"]  # owned by the resource controller
    assert deps["wf-b"]["spec"]["replicas"] == 3


def test_step_env_contract() -> None:
    spec = minimal_spec(queue={"redisSecretRef": {"name": "redis", "key": "url"}})
    dep = by_kind(render_workflow(wf_from(spec)), "Deployment")["wf-a"]
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTSCALE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "url"}
    assert env["AGENTSCALE_TRITON_HOST"]["value"] == "wf-m"
    assert env["AGENTSCALE_STEP"]["value"] == "a"
    graph = yaml.safe_load(env["AGENTSCALE_GRAPH"]["value"])
    assert graph["steps"] == {"a": {"model": "m", "next": ["b"]}, "b": {"model": None, "next": []}}


def test_config_pbtxt() -> None:
    spec = minimal_spec(
        models=[
            {
                "name": "m",
                "modelRepository": "/m",
                "maxBatchSize": 32,
                "dynamicBatching": {"preferredBatchSizes": [16, 8], "maxQueueDelayMicroseconds": 250},
                "instanceGroups": [{"count": 2}],
                "parameters": {"seed": "7"},
                "gpu": {"count": 1},
            }
        ]
    )
    text = config_pbtxt(wf_from(spec).spec.models[0])
    assert 'name: "m"' in text and 'backend: "python"' in text
    assert "max_batch_size: 32" in text
    assert "preferred_batch_size: [ 8, 16 ]" in text
    assert "max_queue_delay_microseconds: 250" in text
    assert "count: 2\n    kind: KIND_GPU" in text
    assert 'key: "seed"' in text and 'string_value: "7"' in text


def test_pvc_model_repository_mounts_the_claim() -> None:
    spec = minimal_spec(models=[{"name": "m", "modelRepository": "pvc://models/team-a"}])
    dep = by_kind(render_workflow(wf_from(spec)), "Deployment")["wf-m"]
    pod = dep["spec"]["template"]["spec"]
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims[0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    env = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"]}
    assert env["SRC"] == "/model-source/team-a/m"


def test_config_change_rolls_the_model_pods() -> None:
    a = wf_from(minimal_spec())
    b = wf_from(minimal_spec(models=[{"name": "m", "modelRepository": "/models", "maxBatchSize": 4}]))

    def hash_of(wf: AgentWorkflow) -> str:
        dep = by_kind(render_workflow(wf), "Deployment")["wf-m"]
        return str(dep["spec"]["template"]["metadata"]["annotations"][L.CONFIG_HASH_ANNOTATION])

    assert hash_of(a) != hash_of(b)


def test_gateway_can_be_disabled() -> None:
    objs = render_workflow(wf_from(minimal_spec(gateway={"enabled": False})))
    assert "wf-gateway" not in by_kind(objs, "Deployment")


@pytest.mark.parametrize(
    ("gpu", "replicas", "expected"),
    [({"count": 2}, 3, 6), ({"migProfile": "1g.10gb"}, 2, 2), (None, 5, 0)],
)
def test_workflow_gpus(gpu: dict[str, Any] | None, replicas: int, expected: int) -> None:
    model: dict[str, Any] = {
        "name": "m",
        "modelRepository": "/m",
        "scaling": {"replicas": replicas, "maxReplicas": 9},
    }
    if gpu:
        model["gpu"] = gpu
    assert workflow_gpus(wf_from(minimal_spec(models=[model]))) == expected


def test_gateway_validator_reaches_the_gateway_env_only_when_set() -> None:
    from agentscale.api.models import AgentWorkflow
    from agentscale.api.validation import parse_spec
    from agentscale.render import render_workflow
    from conftest import minimal_spec

    def gateway_env(**gw: str) -> dict[str, str]:
        spec = parse_spec(minimal_spec(gateway=gw))
        objs = render_workflow(AgentWorkflow(metadata={"name": "w", "namespace": "n"}, spec=spec))
        (dep,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "w-gateway"]
        return {
            e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
        }

    assert "AGENTSCALE_VALIDATOR" not in gateway_env()
    assert gateway_env(validator="pkg.mod:check")["AGENTSCALE_VALIDATOR"] == "pkg.mod:check"
