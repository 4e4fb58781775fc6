"""The resource controller's hands: one owner per replica count; an Event and the last decision per change."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from agentscale.api.models import AgentWorkflowStatus, Scaling
from agentscale.kube import ApiError
from agentscale.resource_controller import Decision, Rule
from agentscale.resource_controller.actuator import (
    FIELD_MANAGER,
    Actuator,
    Target,
    WorkflowRef,
    plan_writes,
)
from agentscale.status import Observed, compute_status, status_patch
from conftest import load_workflow, minimal_spec

WF = WorkflowRef("ns", "wf", "uid-1")
AT = dt.datetime(2026, 11, 28, 9, 30, tzinfo=dt.UTC)


class FakeKube:
    """Stands in for KubeClient in this unit test only: records every write."""

    def __init__(self, fail_scale: set[str] | None = None) -> None:
        self.scales: list[tuple[str, str, int, str | None]] = []
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.fail_scale = fail_scale or set()

    async def scale(self, namespace: str, name: str, replicas: int, field_manager: str | None = None) -> None:
        if name in self.fail_scale:
            raise ApiError(409, {"message": "conflict"}, "scale")
        self.scales.append((namespace, name, replicas, field_manager))

    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str, component: str = "agentscale"
    ) -> None:
        self.events.append(
            {
                "involved": involved,
                "type": type_,
                "reason": reason,
                "message": message,
                "component": component,
            }
        )

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Any) -> None:
        self.statuses.append({"kind": kind, "name": name, "status": status})


def decision(target: str, old: int, new: int) -> Decision:
    return Decision(target, old, new, Rule.Bounds, f"queue lag unknown; holding, bounded; {old} -> {new}")


def target(mode: str, lo: int = 2, hi: int = 6, name: str = "wf-x") -> Target:
    return Target(name, Scaling(mode=mode, minReplicas=lo, maxReplicas=hi, replicas=lo))  # type: ignore[arg-type]


# (case, mode, from, to, written)
OWNERSHIP = [
    ("queue, changed: written", "queue", 1, 2, True),
    ("slo, changed: written", "slo", 7, 6, True),
    ("queue, unchanged: nothing", "queue", 3, 3, False),
    ("hpa: the HPA's, never written", "hpa", 1, 2, False),
    ("fixed: the operator's, never written", "fixed", 1, 2, False),
    ("queue, outside the bounds: refused", "queue", 3, 9, False),
]


@pytest.mark.parametrize(
    ("mode", "old", "new", "written"), [c[1:] for c in OWNERSHIP], ids=[c[0] for c in OWNERSHIP]
)
def test_one_owner_per_replica_count(mode: str, old: int, new: int, written: bool) -> None:
    writes, refused = plan_writes([decision("step/x", old, new)], {"step/x": target(mode)})
    assert [w.deployment for w in writes] == (["wf-x"] if written else [])
    assert bool(refused) == (not written and old != new)


def test_a_part_without_a_deployment_is_not_written() -> None:
    writes, refused = plan_writes([decision("step/x", 1, 2)], {})
    assert writes == [] and refused == ["step/x: no Deployment"]


async def test_a_change_scales_with_its_own_manager_then_posts_an_event_and_the_last_decision() -> None:
    kube = FakeKube()
    decisions = [
        decision("step/a", 1, 2),
        decision("step/h", 1, 2),  # mode hpa: refused
        decision("model/m", 3, 3),  # unchanged: nothing
        decision("model/n", 9, 6),
    ]
    targets = {
        "step/a": target("queue", name="wf-a"),
        "step/h": target("hpa", name="wf-h"),
        "model/m": target("slo", name="wf-m"),
        "model/n": target("slo", name="wf-n"),
    }
    out = await Actuator(kube, clock=lambda: AT).apply(WF, decisions, targets)  # type: ignore[arg-type]
    assert kube.scales == [("ns", "wf-a", 2, FIELD_MANAGER), ("ns", "wf-n", 6, FIELD_MANAGER)]
    assert [d.target for d in out.scaled] == ["step/a", "model/n"] and len(out.refused) == 1
    assert [(e["reason"], e["message"]) for e in kube.events] == [
        ("Scaled", f"step/a: {decisions[0].reason}"),
        ("Scaled", f"model/n: {decisions[3].reason}"),
    ]
    assert kube.events[0]["involved"]["uid"] == "uid-1" and kube.events[0]["component"] == FIELD_MANAGER

    # One status write per cycle: each changed part's entry and the last change, and only those keys.
    def entry(d: Any) -> dict[str, Any]:
        return {
            "time": "2026-11-28T09:30:00Z",
            "fromReplicas": d.from_replicas,
            "desired": d.to_replicas,
            "rule": str(d.rule),
            "reason": d.reason,
        }

    assert kube.statuses == [
        {
            "kind": "AgentWorkflow",
            "name": "wf",
            "status": {
                "scaling": {"step/a": entry(decisions[0]), "model/n": entry(decisions[3])},
                "lastScalingDecision": {
                    "time": "2026-11-28T09:30:00Z",
                    "target": "model/n",
                    "fromReplicas": 9,
                    "toReplicas": 6,
                    "reason": decisions[3].reason,
                },
            },
        }
    ]
    # The key is one the CRD knows (the model refuses unknown keys).
    AgentWorkflowStatus.model_validate(kube.statuses[0]["status"])


async def test_entries_of_parts_no_longer_controlled_are_removed() -> None:
    kube = FakeKube()
    targets = {"step/a": target("queue"), "step/f": target("fixed")}
    # nothing changed, but status.scaling still holds a removed step and one now in mode fixed
    await Actuator(kube, clock=lambda: AT).apply(
        WF, [decision("step/a", 2, 2)], targets, ["step/a", "step/f", "step/gone"]
    )  # type: ignore[arg-type]
    assert [s["status"] for s in kube.statuses] == [{"scaling": {"step/f": None, "step/gone": None}}]
    kube.statuses.clear()
    await Actuator(kube).apply(WF, [decision("step/a", 2, 2)], targets, ["step/a"])  # type: ignore[arg-type]
    assert kube.statuses == []  # nothing to remove, nothing changed: no write


async def test_nothing_changed_writes_nothing() -> None:
    kube = FakeKube()
    out = await Actuator(kube).apply(WF, [decision("step/a", 2, 2)], {"step/a": target("queue")})  # type: ignore[arg-type]
    assert (kube.scales, kube.events, kube.statuses) == ([], [], [])
    assert not out.scaled and not out.failed


async def test_a_failed_scale_posts_nothing_and_is_reported() -> None:
    kube = FakeKube(fail_scale={"wf-a"})
    out = await Actuator(kube).apply(WF, [decision("step/a", 1, 2)], {"step/a": target("queue", name="wf-a")})  # type: ignore[arg-type]
    assert out.unchanged() == {"step/a"} and not out.scaled
    assert (kube.events, kube.statuses) == ([], [])


async def test_no_write_once_leadership_is_gone() -> None:
    kube = FakeKube()
    act = Actuator(kube, may_write=lambda: False)  # type: ignore[arg-type]
    out = await act.apply(WF, [decision("step/a", 1, 2)], {"step/a": target("queue")})
    assert kube.scales == [] and out.unchanged() == {"step/a"}


def test_the_workflow_controllers_status_writes_leave_the_last_decision_alone() -> None:
    wf = load_workflow({"metadata": {"name": "wf"}, "spec": minimal_spec()})
    last = {
        "time": "2026-11-28T09:30:00Z",
        "target": "step/a",
        "fromReplicas": 1,
        "toReplicas": 3,
        "reason": "r",
    }
    previous = {"observedGeneration": 1, "lastScalingDecision": last}
    new = compute_status(Observed(generation=2, workflow=wf, previous=previous))
    assert "lastScalingDecision" not in new
    patch = status_patch(previous, new)
    assert patch is not None and "lastScalingDecision" not in patch
