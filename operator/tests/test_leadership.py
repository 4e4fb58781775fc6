"""Two replicas, one writing: the workflow controller's gate on the Lease, the elector's listeners, and the
write-refusing client (two operator processes on a real API server: e2e/tests/test_failover.py)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from agentscale import kinds
from agentscale.kube import KubeClient
from agentscale.leadership import LeaderOnlyClient, NotLeading
from agentscale.resource_controller.leader import LeaderElector, new_identity
from agentscale.workflow_controller import WorkflowController
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import minimal_spec
from test_resource_leader import CFG, ME, FakeClock, FakeLeases
from test_workflow_controller import Store, record

KEY = ("ns", "wf")


class FakeLeader:
    """Stands in for the LeaderElector in this unit test only: leadership set by hand, listeners kept."""

    def __init__(self) -> None:
        self.is_leader = False
        self.listeners: list[tuple[Callable[[], None], Callable[[], None]]] = []

    def add_listener(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        self.listeners.append((on_started, on_stopped))

    def win(self) -> None:
        self.is_leader = True
        for started, _ in self.listeners:
            started()

    def lose(self) -> None:
        self.is_leader = False
        for _, stopped in self.listeners:
            stopped()


class Api:
    """A local HTTP server in this unit test only (not an API server): records every request, answers {},
    and holds ConfigMap writes while ``hold`` is clear."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.server = TestServer(self._app())

    def _app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.seen.append(f"{request.method} {request.path}")
            if "/configmaps/" in request.path and request.method != "GET":
                await self.hold.wait()
            return web.json_response({})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    def writes(self) -> list[str]:
        return [s for s in self.seen if not s.startswith("GET ")]


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, KubeClient]]:
    fake = Api()
    await fake.server.start_server()
    async with aiohttp.ClientSession() as session:
        yield fake, KubeClient(str(fake.server.make_url("")).rstrip("/"), session, "agentscale")
    await fake.server.close()


def controller(
    kube: KubeClient, records: dict[tuple[str, str], dict[str, Any]], leader: FakeLeader | None
) -> WorkflowController:
    op = WorkflowController(kube, reconcile_workers=0, leader=leader)
    op.cache.bind({"agentworkflows_idx": Store({k: [v] for k, v in records.items()})})
    return op


async def wait_until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in the unit test")


# ---------------------------------------------------------------------------------------- the controller


async def test_a_standby_queues_nothing_and_a_takeover_requeues_every_workflow(
    api: tuple[Api, KubeClient],
) -> None:
    other = ("ns", "other")
    leader = FakeLeader()
    op = controller(api[1], {KEY: record(3), other: record(1)}, leader)
    assert leader.listeners == [(op.take_over, op.stand_by)]
    op.schedule(KEY)
    op.schedule(other, force=True)
    op.request_refresh(KEY)
    assert op._queue.qsize() == 0 and not op._dirty

    # What an earlier term remembered is stale now (another leader wrote since): forgotten on takeover.
    op.done_generation[KEY] = 3
    op.written[KEY] = {"conditions": []}
    leader.win()
    assert op.leading
    queued = {op._queue.get_nowait() for _ in range(op._queue.qsize())}
    assert queued == {KEY, other}
    assert not op.done_generation and not op.written


async def test_losing_the_lease_drops_the_queue_and_the_dirty_set(api: tuple[Api, KubeClient]) -> None:
    leader = FakeLeader()
    op = controller(api[1], {KEY: record(1)}, leader)
    leader.win()
    op.request_refresh(KEY)
    assert op._queue.qsize() == 1 and op._dirty
    leader.lose()
    assert not op.leading and op._queue.qsize() == 0 and not op._queued and not op._dirty
    op.schedule(KEY, force=True)
    assert op._queue.qsize() == 0


async def test_a_standby_remembers_drift_without_correcting_it(api: tuple[Api, KubeClient]) -> None:
    op = controller(api[1], {KEY: {**record(1), "spec": minimal_spec()}}, FakeLeader())
    ck = ("Deployment", "wf-a")
    rec = op.cache.workflow_record(KEY)
    assert rec is not None
    want = json.loads(op.render(KEY, rec).children[ck])
    live = json.loads(json.dumps(want))
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "someone-else:1"
    for _ in range(6):  # more than the free corrections: a leader would back off and post DriftPersists
        op.check_drift(KEY, live)
        op.verified.clear()
    assert op.drifted[KEY] == {ck: ["spec.template.spec.containers[worker].image"]}
    assert op._queue.qsize() == 0 and not op.corrections and not op._posts
    # The leader put it back: the standby forgets the drift (its takeover must not re-apply it for nothing).
    op.check_drift(KEY, want)
    assert op.drifted[KEY] == {}
    assert api[0].seen == []


async def test_losing_the_lease_mid_reconcile_stops_its_writes_and_does_not_retry(
    api: tuple[Api, KubeClient],
) -> None:
    fake, kube = api
    leader = FakeLeader()
    op = controller(kube, {KEY: {**record(1), "spec": minimal_spec()}}, leader)
    leader.win()
    fake.hold.clear()  # the ConfigMap applies (sent first) hang in flight
    worker = asyncio.create_task(op._worker())
    await wait_until(lambda: any("/configmaps/" in s for s in fake.seen))
    sent = fake.writes()
    leader.lose()
    fake.hold.set()
    await wait_until(lambda: KEY not in op._running)
    await asyncio.sleep(0.05)
    worker.cancel()
    # Nothing after the loss: no Deployment, no status, no Event; and no retry scheduled.
    assert fake.writes() == sent
    first = {k.plural for k in kinds.OWNED if k.apply_first}  # sent before the loss, the rest after it
    assert sent and all(s.split("/")[-2] in first for s in sent), sent
    assert not op.failures and KEY not in op.done_generation


async def test_an_overdue_renewal_refuses_writes_and_retries_within_the_term(
    api: tuple[Api, KubeClient],
) -> None:
    fake, kube = api
    leader = FakeLeader()
    op = controller(kube, {KEY: {**record(1), "spec": minimal_spec()}}, leader)
    leader.win()
    leader.is_leader = False  # the renewal is overdue; the elector has not ended the term (yet)
    worker = asyncio.create_task(op._worker())
    await wait_until(lambda: bool(op.failures.get(KEY)))
    worker.cancel()
    assert fake.seen == [] and KEY not in op.done_generation


async def test_an_invalid_spec_announced_by_an_earlier_leader_is_not_announced_again(
    api: tuple[Api, KubeClient],
) -> None:
    fake, kube = api
    bad = {**record(1), "spec": {"steps": []}}
    op = controller(kube, {KEY: bad}, None)
    problems = op.render(KEY, bad).problems
    assert problems
    await op.reconcile(KEY, bad)
    events = [s for s in fake.seen if s.endswith("/events")]
    assert len(events) == 1

    # A new leader (no memory) sees the condition the previous one wrote: no second Event.
    said = {"type": "Degraded", "status": "True", "reason": "InvalidSpec", "message": "; ".join(problems)}
    announced = {**bad, "status": {"conditions": [said]}}
    op2 = controller(kube, {KEY: announced}, None)
    await op2.reconcile(KEY, announced)
    assert [s for s in fake.seen if s.endswith("/events")] == events


async def test_the_client_refuses_every_write_but_not_reads_while_not_leading(
    api: tuple[Api, KubeClient],
) -> None:
    fake, kube = api
    leading = False
    client = LeaderOnlyClient.of(kube, lambda: leading)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
    involved = {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "namespace": "ns", "uid": "u"}
    writes = [
        lambda: client.apply(cm),
        lambda: client.delete("v1", "ConfigMap", "ns", "c"),
        lambda: client.patch_status("agentscale.io/v1alpha1", "AgentWorkflow", "ns", "wf", {}),
        lambda: client.post_event(involved, "Normal", "Reconciled", "x"),
    ]
    for write in writes:
        with pytest.raises(NotLeading):
            await write()
    assert fake.seen == []
    await client.get("v1", "ConfigMap", "ns", "c")
    assert fake.seen == ["GET /api/v1/namespaces/ns/configmaps/c"]
    leading = True
    for write in writes:
        await write()
    assert [s.split()[0] for s in fake.seen[1:]] == ["PATCH", "DELETE", "PATCH", "POST"]


# ---------------------------------------------------------------------------------------- the elector


async def test_listeners_hear_each_term_start_and_end_and_a_failing_one_changes_nothing() -> None:
    clock = FakeClock()
    store = FakeLeases(clock)
    e = LeaderElector(store, CFG, identity=ME, clock=clock, rng=random.Random(7))
    heard: list[tuple[str, bool]] = []

    def broken() -> None:
        raise RuntimeError("listener bug")

    e.add_listener(broken, broken)
    e.add_listener(
        lambda: heard.append(("started", e.is_leader)), lambda: heard.append(("stopped", e.is_leader))
    )
    e.start()  # nothing to lead of its own: only the listeners act
    for _ in range(50):
        if heard:
            break
        await asyncio.sleep(0)
    assert heard == [("started", True)]
    assert store.record.holder == ME
    await e.stop()
    assert heard == [("started", True), ("stopped", False)]  # is_leader already False when told
    assert store.record.holder == ""  # released


def test_the_identity_is_the_pod_name_from_the_downward_api() -> None:
    ident = new_identity({"POD_NAME": "agentscale-7d9f-abc", "HOSTNAME": "custom-hostname"})
    assert ident.startswith("agentscale-7d9f-abc_") and len(ident) == len("agentscale-7d9f-abc_") + 8
    assert new_identity({"HOSTNAME": "h"}).startswith("h_")
