"""The workflow controller's work queue (level-triggered on generation, de-duplicated, retried with backoff)
and its drift checks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from agentscale import kinds
from agentscale.reconcile import ExistingChild
from agentscale.workflow_controller import WorkflowController
from conftest import minimal_spec


class Store(dict):  # type: ignore[type-arg]
    """Stands in for a kopf index in this unit test: key -> list of values."""


class NullClient:
    """Stands in for KubeClient in this unit test only: Events go nowhere."""

    async def close(self) -> None:
        return None

    async def post_event(self, *_: Any) -> None:
        return None


def operator_with(records: dict[tuple[str, str], dict[str, Any]]) -> WorkflowController:
    op = WorkflowController(NullClient(), reconcile_workers=0)  # type: ignore[arg-type]
    op.cache.bind({"agentworkflows_idx": Store({k: [v] for k, v in records.items()})})
    return op


def record(generation: int, deleting: bool = False) -> dict[str, Any]:
    return {"spec": {}, "generation": generation, "uid": "u", "deleting": deleting, "status": {}}


async def test_schedule_dedupes_and_skips_reconciled_generations() -> None:
    key = ("ns", "wf")
    op = operator_with({key: record(2)})
    op.schedule(key)
    op.schedule(key)
    assert op._queue.qsize() == 1
    await op._queue.get()
    op._queued.clear()
    op.done_generation[key] = 2
    op.schedule(key)
    assert op._queue.qsize() == 0  # status-only events cost nothing
    op.schedule(key, force=True)
    assert op._queue.qsize() == 1


async def test_deleting_or_unknown_workflows_are_not_scheduled() -> None:
    op = operator_with({("ns", "gone"): record(1, deleting=True)})
    op.schedule(("ns", "gone"))
    op.schedule(("ns", "never-seen"))
    assert op._queue.qsize() == 0


async def test_change_during_a_reconcile_runs_again() -> None:
    key = ("ns", "wf")
    op = operator_with({key: record(1)})
    calls: list[int] = []
    gate = asyncio.Event()

    async def fake_reconcile(k: Any, record: Any) -> None:
        calls.append(record["generation"])
        if len(calls) == 1:
            await gate.wait()

    op.reconcile = fake_reconcile  # type: ignore[method-assign]
    worker = asyncio.create_task(op._worker())
    op.schedule(key)
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.01)
    op.schedule(key, force=True)  # arrives while the first reconcile runs
    gate.set()
    for _ in range(100):
        if len(calls) == 2:
            break
        await asyncio.sleep(0.01)
    worker.cancel()
    assert calls == [1, 1]
    assert op.done_generation[key] == 1


async def test_failures_retry_with_backoff() -> None:
    key = ("ns", "wf")
    op = operator_with({key: record(1)})

    async def failing(*_: Any) -> None:
        raise RuntimeError("apiserver unavailable")

    op.reconcile = failing  # type: ignore[method-assign]
    worker = asyncio.create_task(op._worker())
    op.schedule(key)
    for _ in range(100):
        if op.failures.get(key):
            break
        await asyncio.sleep(0.01)
    worker.cancel()
    assert op.failures[key] == 1 and key not in op.done_generation


async def test_a_failed_status_refresh_is_retried_without_another_event() -> None:
    """The last event of a quiet workflow came while the API server was away: its status refresh failed
    and nothing else will wake the status loop, so the loop itself must try again (it once waited for an
    unrelated event, and a workflow stayed not Ready for good after an etcd restart)."""
    key = ("ns", "wf")
    op = operator_with({key: record(1)})
    op.debounce = 0.0
    calls: list[float] = []

    async def flaky_refresh(k: Any) -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise RuntimeError("etcdserver: request timed out")

    op.refresh = flaky_refresh  # type: ignore[method-assign]
    loop = asyncio.create_task(op.run())
    op.request_refresh(key)  # the one and only event
    for _ in range(400):
        if len(calls) >= 2:
            break
        await asyncio.sleep(0.01)
    loop.cancel()
    assert len(calls) == 2, calls
    assert key not in op.refresh_failures and key not in op._dirty


def _live(op: WorkflowController, key: tuple[str, str], ck: tuple[str, str]) -> dict[str, Any]:
    record = op.cache.workflow_record(key)
    assert record is not None
    return json.loads(op.render(key, record).children[ck])


async def test_drift_is_detected_once_and_queued_for_correction() -> None:
    key = ("ns", "wf")
    op = operator_with({key: {**record(1), "spec": minimal_spec()}})
    ck = ("Deployment", "wf-a")
    live = _live(op, key, ck)
    live["status"] = {"readyReplicas": 1}
    op.check_drift(key, live)
    assert op._queue.qsize() == 0 and op.verified[key][ck]  # clean: remembered, nothing to do

    live["spec"]["template"]["spec"]["containers"][0]["image"] = "someone-else:1"
    op.check_drift(key, live)
    assert op.drifted[key][ck] == ["spec.template.spec.containers[worker].image"]
    assert op._queue.qsize() == 1


async def test_a_child_from_another_generation_is_not_drift() -> None:
    key = ("ns", "wf")
    op = operator_with({key: {**record(1), "spec": minimal_spec()}})
    live = _live(op, key, ("Deployment", "wf-a"))
    live["metadata"]["annotations"]["agentscale.io/spec-hash"] = "older"
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "old:1"
    op.check_drift(key, live)
    assert key not in op.drifted


async def test_a_child_that_keeps_drifting_backs_off() -> None:
    key = ("ns", "wf")
    op = operator_with({key: {**record(1), "spec": minimal_spec()}})
    ck = ("Deployment", "wf-b")
    queued_now = []
    for n in range(1, 6):
        live = _live(op, key, ck)
        live["spec"]["replicas"] = 10 + n
        op.check_drift(key, live)
        queued_now.append(op._queue.qsize())
        op._queue = asyncio.Queue()
        op._queued.clear()
    # Three corrections at once, then deferred (call_later) with a Warning Event posted once.
    assert queued_now == [1, 1, 1, 0, 0]
    assert op.corrections[(key, ck)][0] == 5
    assert len(op._posts) == 1
    await asyncio.gather(*op._posts)


class FailingClient(NullClient):
    """Stands in for KubeClient in this unit test only: every apply fails as if the API server were down."""

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("apiserver unavailable")


async def test_drift_survives_a_failed_correction() -> None:
    key = ("ns", "wf")
    op = WorkflowController(FailingClient(), reconcile_workers=0)  # type: ignore[arg-type]
    rec = {**record(1), "spec": minimal_spec()}
    op.cache.bind({"agentworkflows_idx": Store({key: [rec]})})
    rendered = op.render(key, rec)
    by_kind: dict[str, list[ExistingChild]] = {}
    for (kind, name), raw in rendered.children.items():
        digest = json.loads(raw)["metadata"]["annotations"]["agentscale.io/spec-hash"]
        by_kind.setdefault(kind, []).append(ExistingChild(kind, name, digest))
    op.cache.bind({k.index_id: Store({key: by_kind.get(k.kind, [])}) for k in kinds.OWNED})
    assert op.cache.existing_children(key).keys() == rendered.children.keys()
    ck = ("ConfigMap", "wf-m-config")
    op.drifted[key] = {ck: ["data.config.pbtxt"]}
    with pytest.raises(RuntimeError):
        await op.reconcile(key, rec)
    assert op.drifted[key] == {ck: ["data.config.pbtxt"]}


async def test_a_metadata_edit_is_checked_against_metadata_only() -> None:
    key = ("ns", "wf")
    op = operator_with({key: {**record(1), "spec": minimal_spec()}})
    ck = ("Deployment", "wf-a")
    live = _live(op, key, ck)
    live["metadata"]["generation"] = 1
    op.check_drift(key, live)  # first sight: everything compared, clean
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"  # the Deployment controller's
    op.check_drift(key, live)
    assert key not in op.drifted
    live["metadata"]["labels"].pop("app.kubernetes.io/part-of")
    op.check_drift(key, live)
    assert op.drifted[key][ck] == ["metadata.labels.app.kubernetes.io/part-of"]


async def test_one_parse_per_generation_is_shared_through_the_cache() -> None:
    key = ("ns", "wf")
    rec = {**record(1), "spec": minimal_spec()}
    op = operator_with({key: rec})
    rendered = op.render(key, rec)
    assert rendered.workflow is op.cache.parsed(key, rec).workflow  # what the resource controller reads
    newer = {**rec, "generation": 2}
    assert op.cache.parsed(key, newer).workflow is not rendered.workflow
    op.forget(key)
    assert op.cache.parsed(key, newer).generation == 2
