"""The resource controller's loop: the clamp moved here from the reconcile, fail static, no writes when idle,
cycles only while leading (the real API server: e2e/tests/test_rc_actuator.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agentscale.cache import ClusterCache
from agentscale.resource_controller import PartKind
from agentscale.resource_controller.actuator import FIELD_MANAGER
from agentscale.resource_controller.leader import LeaseConfig
from agentscale.resource_controller.loop import LoopSettings, ResourceController, snapshot_of
from agentscale.status import DeploymentSummary
from conftest import load_workflow, minimal_spec
from test_resource_actuator import FakeKube
from test_resource_leader import NAME, NS, FakeClock, FakeLeases

KEY = ("ns", "wf")
STEPS = [
    {
        "name": "a",
        "model": "m",
        "scaling": {"mode": "queue", "minReplicas": 3, "maxReplicas": 6},
        "next": ["b"],
    },
    {"name": "b", "scaling": {"mode": "hpa", "minReplicas": 1, "maxReplicas": 4}, "next": ["c"]},
    {"name": "c", "scaling": {"mode": "fixed", "replicas": 2}, "next": ["q"]},
    {"name": "q", "scaling": {"mode": "queue", "minReplicas": 0, "maxReplicas": 5}},
]
MODELS = [
    {
        "name": "m",
        "modelRepository": "/models",
        "scaling": {"mode": "slo", "minReplicas": 1, "maxReplicas": 2},
    }
]


class FakeApi(FakeKube):
    """The writes the actuator makes, plus a Lease store; stands in for KubeClient in this unit test only."""

    def __init__(self, clock: FakeClock, **kw: Any) -> None:
        super().__init__(**kw)
        self.leases = FakeLeases(clock)
        self.closed = False
        self.scaled = asyncio.Event()

    async def scale(self, namespace: str, name: str, replicas: int, field_manager: str | None = None) -> None:
        await super().scale(namespace, name, replicas, field_manager)
        self.scaled.set()

    async def get(self, *args: str) -> dict[str, Any] | None:
        return await self.leases.get(*args)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return await self.leases.create(obj)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        return await self.leases.replace(obj)

    async def close(self) -> None:
        self.closed = True


def deployment(part: str, replicas: int, component: str = "step") -> DeploymentSummary:
    return DeploymentSummary(f"wf-{part}", component, part, replicas, replicas, replicas, True, False, "h")


def cache_with(
    replicas: dict[str, int], spec: dict[str, Any] | None = None, deleting: bool = False
) -> ClusterCache:
    cache = ClusterCache()
    record = {
        "spec": spec or minimal_spec(steps=STEPS, models=MODELS),
        "status": {},
        "generation": 1,
        "uid": "uid-1",
        "deleting": deleting,
    }
    deps = [deployment(p, n, "model" if p == "m" else "step") for p, n in replicas.items()]
    cache.indexes = {"agentworkflows_idx": {KEY: [record]}, "deployments_idx": {KEY: deps}}
    return cache


def controller(cache: ClusterCache, api: FakeApi, clock: FakeClock | None = None) -> ResourceController:
    rc = ResourceController(api, cache, LoopSettings(lease=LeaseConfig(NS, NAME)), clock=clock)  # type: ignore[arg-type]
    rc.actuator.may_write = lambda: True  # leadership is tested below and in test_resource_leader.py
    return rc


async def test_counts_outside_the_bounds_are_clamped_and_only_controller_owned_ones() -> None:
    clock = FakeClock()
    api = FakeApi(clock)
    cache = cache_with({"a": 1, "b": 9, "c": 5, "q": 0, "m": 4})
    rc = controller(cache, api, clock)
    await rc.cycle()
    # a (queue, below min) and m (slo, above max) move into bounds; b (hpa) and c (fixed) belong to others;
    # q (queue, min 0) at 0 is within bounds and holds.
    assert sorted(api.scales) == [("ns", "wf-a", 3, FIELD_MANAGER), ("ns", "wf-m", 2, FIELD_MANAGER)]
    assert {e["message"].split(":")[0] for e in api.events} == {"step/a", "model/m"}
    assert all(e["reason"] == "Scaled" for e in api.events)
    assert "bounded to [3, 6]" in next(e["message"] for e in api.events if e["message"].startswith("step/a"))
    assert len(api.statuses) == 1
    # The cache catches up; the next cycles write nothing.
    rc.cache = cache_with({"a": 3, "b": 9, "c": 5, "q": 0, "m": 2})
    for _ in range(3):
        clock.t += 15
        await rc.cycle()
    assert len(api.scales) == 2 and len(api.events) == 2 and len(api.statuses) == 1


async def test_without_signals_nothing_within_the_bounds_moves() -> None:
    clock = FakeClock()
    api = FakeApi(clock)
    rc = controller(cache_with({"a": 6, "b": 1, "c": 2, "q": 5, "m": 1}), api, clock)
    for _ in range(20):  # 5 minutes: past every stabilization window and the idle window
        await rc.cycle()
        clock.t += 15
    assert (api.scales, api.events, api.statuses) == ([], [], [])


async def test_missing_deployments_deleting_and_invalid_workflows_are_left_alone() -> None:
    clock = FakeClock()
    for cache in (
        cache_with({"b": 9}),  # a and m have no Deployment yet
        cache_with({"a": 1, "m": 4}, deleting=True),
        cache_with({"a": 1}, spec={"steps": [{"name": "a", "next": ["a"]}]}),  # invalid
    ):
        api = FakeApi(clock)
        await controller(cache, api, clock).cycle()
        assert api.scales == []


async def test_a_failed_write_keeps_the_parts_old_state() -> None:
    clock = FakeClock()
    api = FakeApi(clock, fail_scale={"wf-a"})
    rc = controller(cache_with({"a": 1, "m": 4}), api, clock)
    await rc.cycle()
    assert [s[1] for s in api.scales] == ["wf-m"]
    state = rc.state[KEY]
    assert state["model/m"].last_change_at == clock.t  # changed: its cooldown runs
    assert state["step/a"].last_change_at is None  # not changed: no cooldown, retried next cycle
    clock.t += 15
    api.fail_scale.clear()
    rc.cache = cache_with({"a": 1, "m": 2})
    await rc.cycle()
    assert [s[1] for s in api.scales] == ["wf-m", "wf-a"]


def test_snapshot_has_every_part_with_its_live_replicas() -> None:
    wf = load_workflow(
        {"metadata": {"name": "wf", "namespace": "ns"}, "spec": minimal_spec(steps=STEPS, models=MODELS)}
    )
    snap = snapshot_of(wf, {"step/a": 4}, now=5.0)
    parts = snap.by_key()
    assert list(parts) == ["step/a", "step/b", "step/c", "step/q", "model/m"]
    assert parts["step/a"].replicas == 4 and parts["step/q"].replicas == 0  # no Deployment: nominal (min)
    assert parts["step/a"].next == ("b",) and parts["step/a"].model == "m"
    assert parts["model/m"].kind == PartKind.model and snap.slo_p95_s == 1.0
    assert [p.controlled for p in snap.parts] == [True, False, False, True, True]


async def test_cycles_run_only_while_leading_and_stop_releases_the_lease() -> None:
    clock = FakeClock()  # only for the fake Lease store's bookkeeping; the controller runs on real time
    api = FakeApi(clock)
    api.leases.put("someone-else", duration=1)  # held, and renewed below: we must not cycle
    fast = LeaseConfig(NS, NAME, lease_duration_s=1, renew_deadline_s=0.5, retry_period_s=0.05)
    rc = ResourceController(api, cache_with({"a": 1}), LoopSettings(cycle_s=0.05, lease=fast))  # type: ignore[arg-type]
    rc.start()
    for _ in range(10):
        api.leases.put("someone-else", duration=1)
        await asyncio.sleep(0.05)
    assert rc.cycles == 0 and api.scales == []
    # The holder is gone: its record stops changing, and the lease is ours after its duration.
    await asyncio.wait_for(api.scaled.wait(), 30)
    assert rc.elector.is_leader and api.leases.record.holder == rc.elector.identity
    assert api.scales == [("ns", "wf-a", 3, FIELD_MANAGER)]
    await rc.stop()
    assert api.leases.record.holder == "" and api.closed
    assert not rc.elector.is_leader


def test_settings_from_env() -> None:
    s = LoopSettings.from_env({"AGENTSCALE_RC_CYCLE_SECONDS": "5", "AGENTSCALE_RC_ENABLED": "0"})
    assert (s.enabled, s.cycle_s) == (False, 5.0)
    assert LoopSettings.from_env({}).cycle_s == 15.0
    with pytest.raises(ValueError):
        LoopSettings(cycle_s=0)
