"""Unschedulable pods: the scheduler's words classified, requests summed, and the messages status shows."""

from __future__ import annotations

from decimal import Decimal

import pytest
from agentscale.api.models import CONDITIONS
from agentscale.pending import (
    UNSCHEDULABLE_REASONS,
    PendingPod,
    format_quantity,
    parse_scheduler_message,
    pending_pod,
)
from agentscale.status import ANNOUNCED_CONDITIONS, GPU_SHORT, UNSCHEDULABLE, Observed, compute_status
from test_status import ALL, WF, conds, dep

TAINTS = "3 node(s) had untolerated taint(s)"
PREEMPTION = (
    " preemption: 0/5 nodes are available: 2 No preemption victims found for incoming pod, "
    "3 Preemption is not helpful for scheduling."
)


@pytest.mark.parametrize(
    ("message", "reason", "resource", "nodes"),
    [
        (f"0/5 nodes are available: 2 Insufficient cpu, {TAINTS}.{PREEMPTION}", "InsufficientCPU", "cpu", 5),
        (
            "0/5 nodes are available: 2 Insufficient memory, 3 node(s) had untolerated taint "
            "{nvidia.com/gpu: present}.",
            "InsufficientMemory",
            "memory",
            5,
        ),
        (
            "0/2 nodes are available: 1 Insufficient cpu, 2 Insufficient memory.",
            "InsufficientMemory",
            "memory",
            2,
        ),
        ("0/2 nodes are available: 2 Insufficient cpu, 2 Insufficient memory.", "InsufficientCPU", "cpu", 2),
        (
            "0/3 nodes are available: 3 Insufficient ephemeral-storage.",
            "InsufficientResource",
            "ephemeral-storage",
            3,
        ),
        ("0/2 nodes are available: 2 Too many pods.", "TooManyPods", "", 2),
        (f"0/5 nodes are available: 2 Too many pods, {TAINTS}.", "TooManyPods", "", 5),
        ("0/5 nodes are available: 5 node(s) had untolerated taint(s).", "UntoleratedTaint", "", 5),
        (
            "0/3 nodes are available: 3 node(s) had taints that the pod didn't tolerate.",
            "UntoleratedTaint",
            "",
            3,
        ),
        (
            f"0/5 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, {TAINTS}.",
            "UntoleratedTaint",
            "",
            5,
        ),
        (
            "0/5 nodes are available: 3 node(s) didn't match Pod's node affinity/selector, "
            "2 node(s) were unschedulable.",
            "NodeSelectorMismatch",
            "",
            5,
        ),
        ("0/3 nodes are available: pod affinity terms conflict.", "NodeSelectorMismatch", "", 3),
        ("0/2 nodes are available: 2 node(s) were unschedulable.", "NodesCordoned", "", 2),
        (
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
            "PodAffinityConflict",
            "",
            3,
        ),
        (
            "0/3 nodes are available: 3 node(s) didn't match pod topology spread constraints "
            "(missing required label).",
            "TopologySpreadConflict",
            "",
            3,
        ),
        (
            "0/4 nodes are available: 4 node(s) didn't have free ports for the requested pod ports.",
            "Unschedulable",
            "",
            4,
        ),
        ("no nodes available to schedule pods", "Unschedulable", "", None),
        (
            f"0/5 nodes are available: 2 Insufficient nvidia.com/gpu, {TAINTS}.",
            "InsufficientGPU",
            "nvidia.com/gpu",
            5,
        ),
    ],
)
def test_scheduler_messages_are_classified(
    message: str, reason: str, resource: str, nodes: int | None
) -> None:
    v = parse_scheduler_message(message)
    assert (v.blocker.reason, v.resource, v.nodes) == (reason, resource, nodes)
    assert "preemption" not in v.summary and v.summary.endswith(".")
    if nodes is not None:
        assert v.summary.startswith(f"0/{nodes} nodes are available:")
        assert sum(n for n, _ in v.reasons) >= nodes


def test_every_unschedulable_reason_is_documented() -> None:
    assert set(ANNOUNCED_CONDITIONS) >= {GPU_SHORT, UNSCHEDULABLE}
    assert set(ANNOUNCED_CONDITIONS) <= set(CONDITIONS)
    for reason in UNSCHEDULABLE_REASONS:
        assert reason in CONDITIONS[UNSCHEDULABLE], reason


def cpu_pod(i: int, part: str = "a", cpu: str = "40") -> PendingPod:
    msg = f"0/5 nodes are available: 2 Insufficient cpu, {TAINTS}.{PREEMPTION}"
    return PendingPod(f"p{i}", "step", part, msg, "", 0, (("cpu", cpu), ("memory", "1Gi")))


def test_cpu_shortage_is_named_with_the_request_and_the_schedulers_words() -> None:
    pending = [cpu_pod(0), cpu_pod(1)]
    st = compute_status(
        Observed(
            generation=4,
            workflow=WF,
            deployments=[dep("step", "a", 2, 0), *ALL[:1], *ALL[2:]],
            pending=pending,
        )
    )
    c = conds(st)
    un = c["Unschedulable"]
    assert (un["status"], un["reason"], un["observedGeneration"]) == ("True", "InsufficientCPU", 4)
    text = un["message"]
    assert text.startswith(
        "2 pods cannot be scheduled: step/a x2 (cpu 40 each, 80 in all): not enough free CPU"
    )
    assert (
        "Scheduler: 0/5 nodes are available: 2 Insufficient cpu, 3 node(s) had untolerated taint(s)." in text
    )
    assert "preemption" not in text
    assert "Add nodes (or larger ones) with free CPU, lower resources.requests.cpu or replicas" in text
    assert (c["Ready"]["status"], c["Ready"]["reason"], c["Ready"]["message"]) == (
        "False",
        "InsufficientCPU",
        text,
    )
    assert c["GPUCapacityShort"]["status"] == "False"
    assert st["steps"]["a"]["pending"] == 2


def test_different_blockers_are_each_named_and_the_largest_group_gives_the_reason() -> None:
    taint = PendingPod(
        "t", "model", "m", "0/5 nodes are available: 5 node(s) had untolerated taint(s).", "", 0
    )
    gpu = PendingPod(
        "g", "model", "m", "0/5 nodes are available: 2 Insufficient nvidia.com/gpu.", "nvidia.com/gpu", 2
    )
    st = compute_status(
        Observed(
            generation=1,
            workflow=WF,
            deployments=ALL,
            pending=[cpu_pod(0), cpu_pod(1, "b", "500m"), taint, gpu],
        )
    )
    c = conds(st)
    text = c["Unschedulable"]["message"]
    assert c["Unschedulable"]["reason"] == "InsufficientCPU"
    assert text.startswith(
        "3 pods cannot be scheduled: step/a x1 (requests cpu 40); step/b x1 (requests cpu 500m)"
    )
    assert "model/m x1: the nodes carry taints the pods do not tolerate." in text
    assert "kubectl taint nodes" in text
    assert "nvidia.com/gpu" not in text  # the GPU pod is GPUCapacityShort's
    assert c["GPUCapacityShort"]["status"] == "True"
    assert c["Ready"]["reason"] == "GPUCapacityShort"  # GPUs first, as before


def test_pending_pod_sums_requests_over_containers() -> None:
    pod = {
        "metadata": {"name": "p", "labels": {"agentscale.io/component": "step", "agentscale.io/step": "a"}},
        "spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}},
                {"resources": {"requests": {"cpu": "1", "memory": "512Mi"}}},
            ]
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient memory.",
                }
            ],
        },
    }
    p = pending_pod(pod)
    assert p is not None and not p.short_of_gpus
    assert p.requests == (("cpu", "2500m"), ("memory", "1536Mi"))
    assert p.verdict.blocker.reason == "InsufficientMemory"


@pytest.mark.parametrize(
    ("resource", "value", "text"),
    [("cpu", "2", "2"), ("cpu", "0.25", "250m"), ("memory", "1073741824", "1Gi"), ("memory", "1000", "1000")],
)
def test_format_quantity(resource: str, value: str, text: str) -> None:
    assert format_quantity(resource, Decimal(value)) == text


# --- status through the typed model
