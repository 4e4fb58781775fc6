"""Right-sizing's hands (resource_controller/rightsize_actuator.py): one round against a recording API fake
and canned Prometheus answers; the queries themselves run against a real Prometheus in
test_rightsize_signals.py."""

from __future__ import annotations

from typing import Any

from agentscale.cache import ClusterCache
from agentscale.resource_controller import metrics as M
from agentscale.resource_controller import rightsize_actuator as A
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.leader import LeaseConfig
from agentscale.resource_controller.loop import LoopSettings, ResourceController
from agentscale.resource_controller.rightsize import MIB
from agentscale.resource_controller.signals import ErrorKind, Reading, SignalError
from conftest import minimal_spec
from test_resource_leader import FakeClock

NS, WF = "ns", "shop"
KEY = (NS, WF)
NOW = 1_800_000_000.0


def pod(name: str, part: str = "s", gpu: bool = False, phase: str = "Running") -> dict[str, Any]:
    limits: dict[str, Any] = {"memory": "1Gi"}
    if gpu:
        limits["nvidia.com/gpu"] = 1
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "labels": {
                "app.kubernetes.io/managed-by": "agentscale",
                "agentscale.io/workflow": WF,
                "agentscale.io/component": "step",
                "agentscale.io/step": part,
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": limits},
                }
            ]
        },
        "status": {"phase": phase},
    }


class FakeApi:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.resized: list[tuple[str, str, dict[str, str], str]] = []
        self.status: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []

    async def list(self, api_version: str, kind: str, namespace: str | None = None, **p: str) -> list[Any]:
        assert kind == "Pod" and "agentscale" in p["labelSelector"]
        return self.pods

    async def resize(
        self, namespace: str, name: str, container: str, requests: dict[str, str], field_manager: str
    ) -> None:
        self.resized.append((name, container, requests, field_manager))

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Any) -> None:
        self.status.append(status)

    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str, component: str = ""
    ) -> None:
        self.events.append((type_, reason, message))

    async def apply_status(self, *args: Any, **kw: Any) -> None:
        """The loop's MetricsUnavailable condition (not under test here)."""


class CannedPrometheus:
    """Answers each query with the process source's values for every pod (no cAdvisor series)."""

    url = "http://prometheus.test"

    def __init__(self, cpu: float, memory: float, observed: float, down: bool = False) -> None:
        self.values = {
            "rate(process_cpu": cpu,
            "max_over_time(process": memory,
            "timestamp(process": observed,
        }
        self.down = down
        self.queries: list[str] = []

    async def read(self) -> Reading:
        """The loop's own read of the scaling signals: none (not under test here)."""
        return Reading(NOW, 0.0, {}, NOW)

    async def close(self) -> None:
        """Nothing to close: no session behind the canned answers."""

    async def instant(self, query: str) -> tuple[Any, SignalError | None]:
        self.queries.append(query)
        if self.down:
            return None, SignalError(ErrorKind.Unreachable, "connection refused")
        value = next((v for k, v in self.values.items() if k in query), None)
        if value is None:
            return {"data": {"result": []}}, SignalError(ErrorKind.NoSeries, "no series")
        result = [
            {"metric": {"namespace": NS, "pod": p, "workflow": WF}, "value": [NOW, str(value)]}
            for p in ("w-0", "w-1", "w-gpu")
        ]
        return {"data": {"result": result}}, None


def cache(rightsizing: dict[str, Any] | None, status: dict[str, Any] | None = None) -> ClusterCache:
    step: dict[str, Any] = {"name": "s", "scaling": {"mode": "queue"}}
    if rightsizing is not None:
        step["rightsizing"] = rightsizing
    record = {
        "spec": minimal_spec(steps=[step]),
        "status": status or {},
        "generation": 1,
        "uid": "uid-wf",
        "deleting": False,
    }
    c = ClusterCache()
    c.indexes = {"agentworkflows_idx": {KEY: [record]}, "deployments_idx": {}, "pods_idx": {}}
    return c


ON = {"enabled": True, "windowSeconds": 60}


def rightsizer(
    api: FakeApi, prom: CannedPrometheus, c: ClusterCache, leader: bool = True
) -> tuple[A.Rightsizer, M.ControllerMetrics]:
    metrics = M.ControllerMetrics()
    r = A.Rightsizer(
        api,  # type: ignore[arg-type]
        c,
        prom,  # type: ignore[arg-type]
        PolicyConfig(),
        metrics,
        may_write=lambda: leader,
        clock=lambda: NOW,
    )
    return r, metrics


async def test_a_round_resizes_running_pods_in_place_writes_status_and_an_event() -> None:
    api = FakeApi([pod("w-0"), pod("w-1"), pod("w-gpu", gpu=True), pod("w-2", phase="Pending")])
    prom = CannedPrometheus(cpu=0.18, memory=250 * MIB, observed=60)
    r, metrics = rightsizer(api, prom, cache(ON))
    plans = await r.cycle(0.0)
    assert [p.key for p in plans] == ["step/s"] and plans[0].changed
    want = {"cpu": "216m", "memory": "300Mi"}
    assert api.resized == [
        (n, "worker", want, "agentscale-resource-controller") for n in ("w-0", "w-1", "w-gpu")
    ]
    (status,) = api.status
    entry = status["rightsizing"]["step/s"]
    assert entry["recommended"] == want and entry["observed"] == {"cpu": "180m", "memory": "250Mi"}
    assert entry["resizedPods"] == 3 and entry["time"] == A.stamp(NOW)
    assert (
        entry["reason"]
        == "cpu p95 180m x1.2 = 216m; memory peak 250Mi x1.2 = 300Mi; 500m/512Mi -> 216m/300Mi"
    )
    assert api.events == [
        ("Normal", "Rightsized", f"step/s: {entry['reason']}; resized 3 of 3 running pods in place")
    ]
    text = metrics.text().decode()
    assert 'agentscale_rc_rightsize_resizes_total{kind="step",resource="cpu"} 3.0' in text
    assert len(prom.queries) == 6  # one per source and measure, for every pod at once

    # the next round sees its own status: the pods were resized, nothing more is written
    api2 = FakeApi([pod("w-0"), pod("w-1")])
    r2, _ = rightsizer(api2, prom, cache(ON, {"rightsizing": {"step/s": entry}}))
    r2.resized = dict(r.resized)
    await r2.cycle(0.0)
    assert api2.resized == [] and api2.status == [] and api2.events == []


async def test_fail_static_off_and_follower_write_nothing() -> None:
    api = FakeApi([pod("w-0")])
    down = CannedPrometheus(0.18, 250 * MIB, 60, down=True)
    r, metrics = rightsizer(api, down, cache(ON))
    assert await r.cycle(0.0) == []
    assert (
        'agentscale_rc_rightsize_errors_total{kind="all",reason="Unreachable"} 1.0' in metrics.text().decode()
    )

    prom = CannedPrometheus(0.18, 250 * MIB, 60)
    r, _ = rightsizer(api, prom, cache(None))  # rightsizing off: not even a query
    assert await r.cycle(0.0) == [] and prom.queries == []

    r, _ = rightsizer(api, prom, cache(ON), leader=False)
    await r.cycle(0.0)
    assert api.resized == [] and api.status == [] and api.events == []


async def test_not_enough_data_says_so_once_in_status() -> None:
    api = FakeApi([pod("w-0")])
    r, _ = rightsizer(api, CannedPrometheus(0.18, 250 * MIB, observed=10), cache(ON))
    await r.cycle(0.0)
    assert api.resized == []
    (status,) = api.status
    assert "waiting for usage" in status["rightsizing"]["step/s"]["reason"]


def test_due_on_its_own_cadence() -> None:
    r, _ = rightsizer(FakeApi([]), CannedPrometheus(0, 0, 0), cache(ON))
    assert r.due(0.0)
    r.last_round = 100.0
    assert not r.due(159.0) and r.due(160.0)
    r.reset()
    assert r.due(101.0)


async def test_the_loop_runs_a_round_when_due_on_the_same_reader() -> None:
    api, prom, clock = FakeApi([pod("w-0")]), CannedPrometheus(0.18, 250 * MIB, 60), FakeClock()
    settings = LoopSettings(lease=LeaseConfig("ns-op", "lease"), prometheus_url="http://p:9090")
    rc = ResourceController(api, cache(ON), settings, clock=clock, reader=prom)  # type: ignore[arg-type]
    assert rc.rightsizer.reader is prom and rc.rightsizer.config is settings.policy
    rc.rightsizer.may_write = lambda: True
    await rc.cycle()
    assert [name for name, *_ in api.resized] == ["w-0"]
    asked = len(prom.queries)
    clock.t += settings.policy.rightsize_interval_s - 1
    await rc.cycle()
    assert len(prom.queries) == asked  # not due yet
    clock.t += 1
    await rc.cycle()
    assert len(prom.queries) == 2 * asked


async def test_entries_of_parts_turned_off_are_dropped_from_status() -> None:
    api = FakeApi([pod("w-0")])
    old = {"step/s": {"reason": "x"}, "step/gone": {"reason": "y"}}
    r, _ = rightsizer(api, CannedPrometheus(0.18, 250 * MIB, 60), cache(None, {"rightsizing": old}))
    await r.cycle(0.0)
    assert api.status == [{"rightsizing": {"step/gone": None, "step/s": None}}] and api.resized == []
