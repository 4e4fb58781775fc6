"""A workflow that vanished while kopf's watch was expired (410 Gone): kopf lists again but never reports the
deletion, so its index keeps the workflow. The garbage collector then deletes the children, and the workflow
controller must not create them again (it did, in a loop, before: e2e/tests/test_faults_operator.py)."""

from __future__ import annotations

from typing import Any

from agentscale.workflow_controller import WorkflowController
from conftest import minimal_spec
from test_workflow_controller import Store, record

KEY = ("ns", "wf")


class Recorder:
    """Stands in for KubeClient in this unit test only: GET answers ``live``, applies are recorded."""

    def __init__(self, live: dict[str, Any] | None) -> None:
        self.live = live
        self.gets = 0
        self.applied: list[str] = []

    async def get(self, *_: Any) -> dict[str, Any] | None:
        self.gets += 1
        return self.live

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return obj

    async def patch_status(self, *_: Any) -> None:
        return None

    async def post_event(self, *_: Any) -> None:
        return None

    async def close(self) -> None:
        return None


def controller(client: Recorder) -> tuple[WorkflowController, dict[str, Any]]:
    op = WorkflowController(client, reconcile_workers=0)  # type: ignore[arg-type]
    rec = {**record(1), "spec": minimal_spec()}
    op.cache.bind({"agentworkflows_idx": Store({KEY: [rec]})})
    return op, rec


async def test_children_of_a_vanished_workflow_are_not_created_again() -> None:
    client = Recorder(live=None)  # the API server answers 404
    op, rec = controller(client)
    op.child_gone(KEY, ("Deployment", "wf-a"))  # the garbage collector deleted a child
    assert await op.reconcile(KEY, rec) is None
    assert client.applied == [] and client.gets == 1
    assert op.vanished == {KEY: "u"}
    op.schedule(KEY, force=True)  # the next child's DELETED event: not even queued
    assert op._queue.qsize() == 0


async def test_a_workflow_recreated_under_the_same_name_is_not_mistaken_for_the_vanished_one() -> None:
    client = Recorder(live={"metadata": {"uid": "another"}})
    op, rec = controller(client)
    op.child_gone(KEY, ("Deployment", "wf-a"))
    assert await op.reconcile(KEY, rec) is None and client.applied == []
    op.cache.indexes["agentworkflows_idx"][KEY] = [{**rec, "uid": "another"}]  # kopf's relist brings it
    op.schedule(KEY, force=True)
    assert op._queue.qsize() == 1


async def test_a_child_deleted_by_hand_is_put_back_after_one_get() -> None:
    client = Recorder(live={"metadata": {"uid": "u"}})
    op, rec = controller(client)
    op.child_gone(KEY, ("Deployment", "wf-a"))
    outcome = await op.reconcile(KEY, rec)
    assert outcome is not None and client.applied and client.gets == 1
    assert op.vanished == {}
    await op.reconcile(KEY, rec)  # nothing deleted since: no GET
    assert client.gets == 1


async def test_a_first_reconcile_asks_nothing_before_applying() -> None:
    client = Recorder(live=None)
    op, rec = controller(client)
    assert await op.reconcile(KEY, rec) is not None
    assert client.applied and client.gets == 0
