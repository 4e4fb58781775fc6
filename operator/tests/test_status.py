"""Status from children: conditions, GPU and other scheduling shortages with numbers, minimal patches, and a
status built through the typed model."""

from __future__ import annotations

from typing import Any

import pytest
from agentscale.api.crd import build_crd
from agentscale.api.models import AgentWorkflow, AgentWorkflowStatus
from agentscale.api.validation import parse_spec
from agentscale.status import (
    UNSCHEDULABLE,
    DeploymentSummary,
    Observed,
    PendingPod,
    compute_status,
    pending_pod,
    status_patch,
    summarize_deployment,
)
from conftest import minimal_spec
from pydantic import ValidationError

WF = AgentWorkflow(
    metadata={"name": "wf", "namespace": "ns"},
    spec=parse_spec(minimal_spec(models=[{"name": "m", "modelRepository": "/m", "gpu": {"count": 2}}])),
)


def dep(component: str, part: str, desired: int = 1, ready: int = 1) -> DeploymentSummary:
    return DeploymentSummary(
        f"wf-{part or 'gateway'}", component, part, desired, ready, ready, True, False, "h"
    )


ALL = [dep("model", "m"), dep("step", "a"), dep("step", "b"), dep("gateway", "")]


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_ready() -> None:
    st = compute_status(Observed(generation=3, workflow=WF, deployments=ALL))
    c = conds(st)
    assert c["Ready"]["status"] == "True" and c["Ready"]["observedGeneration"] == 3
    assert c["Progressing"]["status"] == "False"
    assert c["Degraded"]["status"] == "False"
    assert c["GPUCapacityShort"]["status"] == "False"
    assert c["Unschedulable"]["status"] == "False"
    assert st["stepsReady"] == "2/2" and st["modelsReady"] == "1/1"
    assert st["gpus"] == 2
    assert st["steps"]["a"] == {"desired": 1, "ready": 1, "pending": 0}


def test_missing_and_unready_children_block_ready() -> None:
    st = compute_status(Observed(generation=1, workflow=WF, deployments=[dep("step", "a", 2, 1)]))
    c = conds(st)
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "ReplicasNotReady"
    assert "model/m" in c["Ready"]["message"] and "step/a" in c["Ready"]["message"]
    assert c["Progressing"]["status"] == "True"


def test_gpu_shortage_reports_numbers() -> None:
    msg = "0/5 nodes are available: 2 Insufficient nvidia.com/gpu, 3 node(s) had untolerated taint."
    pending = [PendingPod(f"p{i}", "model", "m", msg, "nvidia.com/gpu", 2) for i in range(3)]
    st = compute_status(
        Observed(generation=1, workflow=WF, deployments=[dep("model", "m", 4, 1), *ALL[1:]], pending=pending)
    )
    c = conds(st)
    assert c["GPUCapacityShort"]["status"] == "True"
    text = c["GPUCapacityShort"]["message"]
    assert "3 pods cannot be scheduled" in text and "model/m x3 (2 nvidia.com/gpu each)" in text
    assert "6 nvidia.com/gpu more than the nodes can fit" in text
    assert c["Ready"]["reason"] == "GPUCapacityShort"
    assert c["Unschedulable"]["status"] == "False"  # a GPU shortage is GPUCapacityShort's alone
    assert st["models"]["m"]["pending"] == 3
    assert st["gpus"] == 8


def test_invalid_spec() -> None:
    st = compute_status(Observed(generation=2, workflow=None, problems=["spec.steps[].next: cycle a -> a"]))
    c = conds(st)
    assert c["Degraded"]["reason"] == "InvalidSpec" and "cycle a -> a" in c["Degraded"]["message"]
    assert c["Ready"]["status"] == "False"


def test_transition_time_kept_while_status_holds() -> None:
    first = compute_status(Observed(generation=1, workflow=WF, deployments=ALL))
    for c in first["conditions"]:
        c["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    again = compute_status(Observed(generation=1, workflow=WF, deployments=ALL, previous=first))
    assert status_patch(first, again) is None
    flipped = compute_status(Observed(generation=1, workflow=WF, deployments=ALL[1:], previous=first))
    ready = conds(flipped)["Ready"]
    assert ready["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert conds(flipped)["Degraded"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"


def test_patch_deletes_removed_map_entries_and_keeps_foreign_fields() -> None:
    old = {"steps": {"a": {"desired": 1}, "gone": {"desired": 1}}, "lastScalingDecision": {"reason": "x"}}
    new = {"steps": {"a": {"desired": 1}}}
    assert status_patch(old, new) == {"steps": {"gone": None}}


def test_summaries_from_raw_objects() -> None:
    body = {
        "metadata": {
            "name": "wf-a",
            "generation": 2,
            "labels": {"agentscale.io/component": "step", "agentscale.io/step": "a"},
            "annotations": {"agentscale.io/spec-hash": "abc"},
        },
        "spec": {"replicas": 3},
        "status": {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3},
    }
    d = summarize_deployment(body)
    assert (d.part, d.desired, d.ready, d.spec_hash, d.settled) == ("a", 3, 3, "abc", True)
    pod = {
        "metadata": {"name": "p", "labels": {"agentscale.io/component": "model", "agentscale.io/model": "m"}},
        "spec": {"containers": [{"resources": {"limits": {"nvidia.com/mig-1g.10gb": 1, "cpu": "1"}}}]},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/5 nodes are available: 1 Insufficient nvidia.com/mig-1g.10gb.",
                }
            ],
        },
    }
    p = pending_pod(pod)
    assert p is not None and p.short_of_gpus and p.gpu_resource == "nvidia.com/mig-1g.10gb"
    pod["spec"]["nodeName"] = "n1"
    assert pending_pod(pod) is None


def test_conditions_turned_true_only_on_transition() -> None:
    from agentscale.workflow_controller import conditions_turned_true

    old = {"conditions": [{"type": "GPUCapacityShort", "status": "False"}]}
    new = {"conditions": [{"type": "GPUCapacityShort", "status": "True", "reason": "InsufficientGPU"}]}
    assert [c["type"] for c in conditions_turned_true(old, new, ("GPUCapacityShort",))] == [
        "GPUCapacityShort"
    ]
    assert conditions_turned_true(new, new, ("GPUCapacityShort",)) == []
    assert conditions_turned_true({}, new, ("Degraded",)) == []


def test_autoscaled_floor_counts_before_the_hpa_acts() -> None:
    spec = minimal_spec(
        models=[], steps=[{"name": "a", "scaling": {"mode": "hpa", "minReplicas": 2, "maxReplicas": 4}}]
    )
    wf = AgentWorkflow(metadata={"name": "wf", "namespace": "ns"}, spec=parse_spec(spec))
    deps = [dep("step", "a", desired=1, ready=1), dep("gateway", "")]
    st = compute_status(Observed(generation=1, workflow=wf, deployments=deps))
    assert st["steps"]["a"]["desired"] == 2
    assert conds(st)["Ready"]["status"] == "False"
    deps = [dep("step", "a", desired=2, ready=2), dep("gateway", "")]
    assert (
        conds(compute_status(Observed(generation=1, workflow=wf, deployments=deps)))["Ready"]["status"]
        == "True"
    )


def test_autoscaled_floor_is_the_lower_bound_and_fixed_mode_takes_the_deployment() -> None:
    spec = minimal_spec(
        models=[],
        steps=[
            {"name": "q", "scaling": {"mode": "queue", "minReplicas": 0, "maxReplicas": 4}},
            {"name": "f", "scaling": {"mode": "fixed", "replicas": 3, "maxReplicas": 3}},
        ],
    )
    wf = AgentWorkflow(metadata={"name": "wf", "namespace": "ns"}, spec=parse_spec(spec))
    deps = [dep("step", "q", desired=0, ready=0), dep("step", "f", desired=3, ready=3), dep("gateway", "")]
    st = compute_status(Observed(generation=1, workflow=wf, deployments=deps))
    assert st["steps"]["q"]["desired"] == 0  # a queue-scaled step may idle at zero
    assert st["steps"]["f"]["desired"] == 3
    assert conds(st)["Ready"]["status"] == "True"


# --- every scheduling shortage is named


def _unknown_keys(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Keys in ``value`` the structural schema does not declare: what the API server would prune."""
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                out += _unknown_keys(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                out += _unknown_keys(v, extra, f"{path}.{k}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(f"{path}.{k}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _unknown_keys(item, schema.get("items", {}), f"{path}[{i}]")
    return out


def test_status_has_only_keys_the_crd_keeps() -> None:
    from test_pending import cpu_pod

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    pending = [cpu_pod(0)]
    for obs in (
        Observed(generation=1, workflow=WF, deployments=ALL, pending=pending),
        Observed(generation=1, workflow=None, problems=["bad"]),
    ):
        st = compute_status(obs)
        assert _unknown_keys(st, schema, "status") == []
        assert AgentWorkflowStatus.model_validate(st, extra="forbid").to_dict() == st
    assert "endpoints" in compute_status(Observed(generation=1, workflow=WF, deployments=ALL))


def test_status_omits_what_it_does_not_own_or_produce() -> None:
    no_gateway = AgentWorkflow(
        metadata={"name": "wf", "namespace": "ns"}, spec=parse_spec(minimal_spec(gateway={"enabled": False}))
    )
    st = compute_status(Observed(generation=1, workflow=no_gateway, deployments=ALL[:3]))
    assert "endpoints" not in st and "lastScalingDecision" not in st
    invalid = compute_status(Observed(generation=1, workflow=None))
    assert set(invalid) == {"observedGeneration", "conditions"}


def test_building_is_strict_and_reading_is_lenient() -> None:
    with pytest.raises(ValidationError):
        AgentWorkflowStatus(observedGeneration=1, stepsready="1/1")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AgentWorkflowStatus.model_validate({"conditions": [{"type": "Ready", "status": "True", "why": "x"}]})
    old = {
        "observedGeneration": 2,
        "phase": "Running",  # written by an older operator
        "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": "2020-01-01T00:00:00Z"}],
        "lastScalingDecision": {"target": "step/a", "toReplicas": 3, "by": "controller"},
    }
    read = AgentWorkflowStatus.read(old)
    assert read.observedGeneration == 2 and read.conditions[0].status == "True"
    assert read.lastScalingDecision is not None and read.lastScalingDecision.toReplicas == 3
    wf = AgentWorkflow.model_validate({"metadata": {"name": "wf"}, "spec": minimal_spec(), "status": old})
    assert wf.status is not None and wf.status.observedGeneration == 2
    # A status written before Unschedulable existed gets the condition added, and nothing else changes.
    first = compute_status(Observed(generation=1, workflow=WF, deployments=ALL))
    older = {**first, "conditions": [c for c in first["conditions"] if c["type"] != UNSCHEDULABLE]}
    again = compute_status(Observed(generation=1, workflow=WF, deployments=ALL, previous=older))
    patch = status_patch(older, again)
    assert patch is not None and set(patch) == {"conditions"}
