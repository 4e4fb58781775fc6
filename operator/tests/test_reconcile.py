"""The reconcile plan: compare by spec hash, prune what is gone, never touch autoscaled replicas."""

from __future__ import annotations

from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import parse_spec
from agentscale.reconcile import ExistingChild, plan_children
from agentscale.render import child_key, render_workflow
from agentscale.render import labels as L
from conftest import minimal_spec


def wf(**overrides: object) -> AgentWorkflow:
    return AgentWorkflow(
        metadata={"name": "wf", "namespace": "ns"}, spec=parse_spec(minimal_spec(**overrides))
    )


def existing_from(objs: list[dict]) -> dict[tuple[str, str], ExistingChild]:  # type: ignore[type-arg]
    out = {}
    for o in objs:
        k = child_key(o)
        out[k] = ExistingChild(k[0], k[1], o["metadata"]["annotations"][L.HASH_ANNOTATION], 1)
    return out


def test_first_reconcile_applies_everything() -> None:
    w = wf()
    desired = render_workflow(w, "uid")
    plan = plan_children(w, desired, {})
    assert len(plan.apply) == len(desired) and not plan.prune


def test_noop_reconcile_writes_nothing() -> None:
    w = wf()
    desired = render_workflow(w, "uid")
    assert plan_children(w, desired, existing_from(desired)).empty


def test_changed_step_is_the_only_apply() -> None:
    before = render_workflow(wf(), "uid")
    after_wf = wf(steps=[{"name": "a", "model": "m", "image": "worker:2", "next": ["b"]}, {"name": "b"}])
    plan = plan_children(after_wf, render_workflow(after_wf, "uid"), existing_from(before))
    assert [child_key(o) for o in plan.apply] == [("Deployment", "wf-a")]
    assert not plan.prune


def test_removed_step_is_pruned() -> None:
    before = render_workflow(wf(), "uid")
    after_wf = wf(steps=[{"name": "a", "model": "m"}])
    plan = plan_children(after_wf, render_workflow(after_wf, "uid"), existing_from(before))
    assert [(c.kind, c.name) for c in plan.prune] == [("Deployment", "wf-b")]
    # The graph every worker reads changed, so the remaining workers and the gateway are re-applied.
    assert {child_key(o) for o in plan.apply} == {("Deployment", "wf-a"), ("Deployment", "wf-gateway")}


def test_plan_never_writes_replicas_the_resource_controller_owns() -> None:
    # Mode queue, below its minimum: keeping it in bounds is the resource controller's job
    # (test_resource_loop.py), never the reconcile's: one owner per replica count.
    w = wf(steps=[{"name": "a", "scaling": {"mode": "queue", "minReplicas": 3, "maxReplicas": 6}}])
    desired = render_workflow(w, "uid")
    existing = existing_from(desired)
    assert existing[("Deployment", "wf-a")].replicas == 1
    assert plan_children(w, desired, existing).empty
