"""The GPU rebalancer's hands (``resource_controller/rebalance_actuator.py``): API objects into the planner's
values, and one cycle against a recorded cluster (the real API server: e2e/tests/test_rebalance.py)."""

from __future__ import annotations

from typing import Any

import pytest
from agentscale.cache import ClusterCache
from agentscale.kube import ApiError
from agentscale.pending import pending_pod
from agentscale.resource_controller import rebalance as R
from agentscale.resource_controller import rebalance_actuator as A
from agentscale.status import DeploymentSummary
from conftest import minimal_spec

NS, WF = "ns", "wf"
KEY = (NS, WF)
SHORT = "0/5 nodes are available: 2 Insufficient nvidia.com/gpu, 3 node(s) had untolerated taint(s)."
TOLERATE = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def node(name: str, gpus: int = 8) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "500", "nvidia.com/gpu": str(gpus)}
        },
    }


def pod(
    name: str, where: str, gpus: int, model: str | None = "m", *, pending: bool = False, **meta: Any
) -> dict[str, Any]:
    labels = {}
    owners = []
    if model:
        labels = {
            "app.kubernetes.io/managed-by": "agentscale",
            "agentscale.io/workflow": WF,
            "agentscale.io/component": "model",
            "agentscale.io/model": model,
        }
        owners = [{"kind": "ReplicaSet", "name": f"{WF}-{model}-1", "controller": True}]
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": labels,
            "ownerReferences": owners,
            "creationTimestamp": "2026-11-28T12:00:00Z",
            **meta,
        },
        "spec": {
            "containers": [
                {"name": "c", "resources": {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": gpus}}}
            ],
            "tolerations": TOLERATE,
        },
        "status": {"phase": "Running"},
    }
    if pending:
        body["status"] = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": SHORT}
            ],
        }
    else:
        body["spec"]["nodeName"] = where
    return body


def pdb(model: str, allowed: int, observed: int = 1, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{WF}-{model}",
            "namespace": NS,
            "generation": generation,
            "labels": {
                "agentscale.io/workflow": WF,
                "agentscale.io/component": "model",
                "agentscale.io/model": model,
            },
        },
        "status": {"disruptionsAllowed": allowed, "observedGeneration": observed},
    }


class FakeCluster:
    """Lists recorded objects and records the rebalancer's writes; stands in for KubeClient in this unit
    test only."""

    def __init__(self, nodes: list[Any], pods: list[Any], pdbs: list[Any], refuse: bool = False) -> None:
        self.objects = {"Node": nodes, "Pod": pods, "PodDisruptionBudget": pdbs}
        self.refuse = refuse
        self.lists: list[str] = []
        self.nominated: list[tuple[str, str, Any]] = []
        self.evicted: list[str] = []
        self.events: list[tuple[str, str, str]] = []

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, **params: str
    ) -> list[Any]:
        self.lists.append(kind)
        return self.objects[kind]

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Any) -> None:
        self.nominated.append((kind, name, status))

    async def evict(self, namespace: str, name: str) -> bool:
        if self.refuse:
            raise ApiError(
                429, {"message": "Cannot evict pod as it would violate the pod's disruption budget."}, "evict"
            )
        self.evicted.append(name)
        return True

    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str, component: str = ""
    ) -> None:
        self.events.append((involved["name"], reason, message))


MODELS = [
    {
        "name": "m",
        "modelRepository": "/models",
        "gpu": {"count": 1},
        "scaling": {"mode": "queue", "minReplicas": 1, "maxReplicas": 4},
    },
    {
        "name": "big",
        "modelRepository": "/models",
        "gpu": {"count": 4},
        "scaling": {"mode": "fixed", "replicas": 1},
    },
]


def cache_with(objs: list[dict[str, Any]], m_ready: int = 2) -> ClusterCache:
    cache = ClusterCache()
    record = {
        "spec": minimal_spec(steps=[{"name": "s", "model": "m"}], models=MODELS),
        "status": {},
        "generation": 1,
        "uid": "uid-1",
        "deleting": False,
    }
    deps = [
        DeploymentSummary(f"{WF}-m", "model", "m", 2, m_ready, 2, True, False, "h"),
        DeploymentSummary(f"{WF}-big", "model", "big", 1, 0, 1, True, False, "h"),
    ]
    pending = [p for p in (pending_pod(o) for o in objs) if p is not None]
    cache.indexes = {
        "agentworkflows_idx": {KEY: [record]},
        "deployments_idx": {KEY: deps},
        "pods_idx": {KEY: pending},
    }
    return cache


def fragmented() -> list[dict[str, Any]]:
    return [
        pod("pin-a", "a", 4, None),
        pod("m-a", "a", 1),
        pod("pin-b", "b", 4, None),
        pod("m-b", "b", 1),
        pod("big-1", "", 4, "big", pending=True),
    ]


def rebalancer(
    objs: list[dict[str, Any]], client: FakeCluster, m_ready: int = 2, room: bool = True
) -> A.Rebalancer:
    rb = A.Rebalancer(client, cache_with(objs, m_ready), A.RebalanceSettings())
    rb.headroom[KEY] = (room, "test")
    return rb


async def test_one_cycle_nominates_then_evicts_one_pod_and_says_so() -> None:
    objs = fragmented()
    api = FakeCluster([node("a"), node("b")], objs, [pdb("m", 1)])
    plan = await rebalancer(objs, api).cycle()
    assert plan is not None and plan.node == "a" and [m.pod.name for m in plan.moves] == ["m-a"]
    assert api.nominated == [("Pod", "big-1", {"nominatedNodeName": "a"})]
    assert api.evicted == ["m-a"]
    ((wf, reason, message),) = api.events
    assert (wf, reason) == (WF, "Rebalanced")
    assert "evicted ns/m-a (move 1 of 1)" in message and "free 4 nvidia.com/gpu on a for ns/big-1" in message


@pytest.mark.parametrize(
    ("case", "kw", "pdbs", "why"),
    [
        ("no-headroom", {"room": False}, [pdb("m", 1)], "no SLO headroom (test)"),
        ("at-minimum", {"m_ready": 1}, [pdb("m", 1)], "1 ready, minimum 1"),
        ("pdb-none", {}, [pdb("m", 0)], "allows no disruption"),
        ("pdb-status-stale", {}, [pdb("m", 1, observed=1, generation=2)], "allows no disruption"),
    ],
)
async def test_refusals_write_nothing(
    case: str, kw: dict[str, Any], pdbs: list[Any], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    objs = fragmented()
    api = FakeCluster([node("a"), node("b")], objs, pdbs)
    caplog.set_level("INFO", logger="agentscale.resource_controller.rebalance")
    assert await rebalancer(objs, api, **kw).cycle() is None
    assert api.nominated == [] and api.evicted == [] and api.events == []
    assert why in caplog.text


async def test_a_429_from_the_eviction_api_waits_for_the_next_cycle(caplog: pytest.LogCaptureFixture) -> None:
    objs = fragmented()
    api = FakeCluster([node("a"), node("b")], objs, [pdb("m", 1)], refuse=True)
    caplog.set_level("INFO", logger="agentscale.resource_controller.rebalance")
    rb = rebalancer(objs, api)
    assert await rb.cycle() is None
    assert api.events == [] and rb.evictions == 0
    assert "refuses to evict ns/m-a now" in caplog.text and "disruption budget" in caplog.text


async def test_nothing_pending_for_gpus_costs_no_read() -> None:
    objs = [o for o in fragmented() if o["metadata"]["name"] != "big-1"]
    api = FakeCluster([node("a"), node("b")], objs, [pdb("m", 1)])
    assert await rebalancer(objs, api).cycle() is None
    assert api.lists == []


async def test_waits_while_a_pod_leaves_the_target_node() -> None:
    objs = fragmented()
    objs.append(pod("m-old", "a", 1, deletionTimestamp="2026-11-28T12:00:01Z"))
    objs = [o for o in objs if o["metadata"]["name"] != "pin-a"] + [pod("pin-a", "a", 3, None)]
    api = FakeCluster([node("a"), node("b")], objs, [pdb("m", 1)])
    assert await rebalancer(objs, api).cycle() is None
    assert api.evicted == []


async def test_stops_after_twice_max_moves_for_one_pod(caplog: pytest.LogCaptureFixture) -> None:
    objs = fragmented()
    api = FakeCluster([node("a"), node("b")], objs, [pdb("m", 1)])
    rb = rebalancer(objs, api)
    caplog.set_level("INFO", logger="agentscale.resource_controller.rebalance")
    for _ in range(10):  # the recorded cluster never changes: the replacement "went back" every time
        await rb.cycle()
    assert len(api.evicted) == 2 * rb.settings.max_moves
    assert "8 evictions made for it and it is still pending" in caplog.text


async def test_disabled_does_nothing() -> None:
    objs = fragmented()
    api = FakeCluster([node("a"), node("b")], objs, [pdb("m", 1)])
    rb = rebalancer(objs, api)
    rb.settings = A.RebalanceSettings(enabled=False)
    assert await rb.cycle() is None and api.lists == []


def test_objects_become_plain_values() -> None:
    n = A.node_of(node("a"))
    assert n.allocatable["nvidia.com/gpu"] == 8 and n.allocatable["cpu"] == 64000
    assert n.taints == (R.Taint("nvidia.com/gpu", "present", "NoSchedule"),)
    p = A.pod_of(pod("m-a", "a", 2))
    assert p.requests == {"nvidia.com/gpu": 2, "cpu": 1000} and p.node == "a"
    assert p.owner == R.PartRef(NS, WF, "model", "m") and p.placement.admits(n)
    assert A.pod_of(pod("x", "a", 1, None)).owner is None
    orphan = pod("o", "a", 1)
    orphan["metadata"]["ownerReferences"] = []
    assert A.pod_of(orphan).owner is None  # a bare pod has no ReplicaSet to replace it
    init = pod("i", "a", 1)
    init["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "4"}}}]
    assert A.pod_of(init).requests["cpu"] == 4000
    affinity = pod("aff", "a", 1)
    affinity["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    assert A.pod_of(affinity).node_affinity
    assert [p.name for p in A.gpu_short(fragmented())] == ["big-1"]
    assert A.disruptions_allowed([pdb("m", 2), pdb("n", 3, observed=1, generation=2)]) == {
        R.PartRef(NS, WF, "model", "m"): 2,
        R.PartRef(NS, WF, "model", "n"): 0,
    }


def test_settings_from_env() -> None:
    assert A.RebalanceSettings.from_env({}) == A.RebalanceSettings()
    s = A.RebalanceSettings.from_env(
        {
            "AGENTSCALE_RC_REBALANCE": "0",
            "AGENTSCALE_RC_REBALANCE_MAX_MOVES": "2",
            "AGENTSCALE_RC_REBALANCE_HEADROOM": "assume",
            "AGENTSCALE_RC_REBALANCE_HEADROOM_FRACTION": "0.5",
        }
    )
    assert s == A.RebalanceSettings(False, 2, True, 0.5)
    with pytest.raises(ValueError, match="AGENTSCALE_RC_REBALANCE_HEADROOM='maybe': use signals"):
        A.RebalanceSettings.from_env({"AGENTSCALE_RC_REBALANCE_HEADROOM": "maybe"})
    with pytest.raises(ValueError, match="AGENTSCALE_RC_REBALANCE_HEADROOM_FRACTION must be in"):
        A.RebalanceSettings.from_env({"AGENTSCALE_RC_REBALANCE_HEADROOM_FRACTION": "2"})
