"""The resource controller's cycle against a real Prometheus: a queue-mode step (its workers' lag) and a
queue-mode Triton model server (its queue time, mapped to the workflow by the controller's relabelling) of
one workflow, next to a same-named workflow in another namespace, scaled from one read; then Prometheus
stopped (hold, MetricsUnavailable) and started again. The API server's side is this unit test's fake
(the writes are recorded); e2e/tests/test_rc_signals.py runs the same loop inside the operator against a
real API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentscale.resource_controller.actuator import FIELD_MANAGER
from agentscale.resource_controller.leader import LeaseConfig
from agentscale.resource_controller.loop import LoopSettings, ResourceController
from agentscale.resource_controller.promql import Signal, Windows
from agentscale.resource_controller.signals import PrometheusReader, Reading
from agentscale.status import METRICS_UNAVAILABLE
from agentscale_harness.local import wait_until
from conftest import minimal_spec
from prom_fleet import Exporter, Latency, Pod, TritonPod, Worker, scraped
from test_rc_wiring import StatusApi
from test_resource_leader import NAME, NS, FakeClock
from test_resource_loop import cache_with

LAT = Latency((0.2, 0.6, 0.9, 0.97, 1.0), 0.05)
SPEC = minimal_spec(
    steps=[
        {
            "name": "a",
            "model": "m",
            "scaling": {"mode": "queue", "minReplicas": 2, "maxReplicas": 10, "targetQueueLagPerReplica": 10},
        }
    ],
    models=[
        {
            "name": "m",
            "modelRepository": "/models",
            "scaling": {"mode": "queue", "minReplicas": 2, "maxReplicas": 10, "targetQueueTimeMs": 20},
        }
    ],
)


def fleet() -> list[list[Pod]]:
    """ns/wf: two workers of step a (lag 90: both see the stream), one Triton pod of model m (60 ms queue
    time per request); other/wf, the same names: lag 500, which must not reach ns/wf."""
    pods: list[Pod] = [
        Worker("ns", "wf", "a", "wf-a-0", 2.0, 90.0, 0.0, LAT),
        Worker("ns", "wf", "a", "wf-a-1", 2.0, 90.0, 0.0, LAT),
        Worker("other", "wf", "a", "wf-a-0", 2.0, 500.0, 0.0, LAT),
        TritonPod("ns", "wf", "m", "wf-m-0", 4.0, 1.0, 1.0, 60_000.0, 5_000.0),
    ]
    return [[p] for p in pods]


def has(reading: Reading) -> bool:
    ok = reading.available
    ok = ok and any(r.namespace == "ns" for r in reading.results[Signal.step_queue_lag].values)
    return ok and any(r.namespace == "ns" for r in reading.results[Signal.model_queue_time_s].values)


def condition(cache: Any) -> dict[str, Any]:
    record = cache.indexes["agentworkflows_idx"][("ns", "wf")][0]
    return next(c for c in record["status"].get("conditions", []) if c["type"] == METRICS_UNAVAILABLE)


async def test_one_read_scales_a_step_on_lag_and_a_model_on_queue_time_then_prometheus_stops(
    tmp_path: Path,
) -> None:
    exporter = Exporter(fleet())
    with scraped(exporter, tmp_path / "prom", interval_s=1.0) as prom:
        reader = PrometheusReader(prom.url, Windows(stable_s=5, short_s=3))
        try:
            readings: list[Reading] = []

            async def ready() -> bool:
                readings.append(await reader.read())
                return has(readings[-1])

            await wait_until(ready, 60, 0.5, "the fleet's lag and Triton queue time")
            clock = FakeClock()
            cache = cache_with({"a": 2, "m": 2}, spec=SPEC)
            api = StatusApi(clock, cache)
            settings = LoopSettings(lease=LeaseConfig(NS, NAME), prometheus_url=prom.url)
            rc = ResourceController(api, cache, settings, clock=clock, reader=reader)  # type: ignore[arg-type]
            rc.actuator.may_write = lambda: True

            await rc.cycle()
            # a: lag 90 (max over two workers, not 180; not the other namespace's 500) at 10 per replica
            # needs 9, at most 2 + 4 this cycle; m: 60 ms queue time / 20 ms target x 2 replicas = 6.
            assert sorted(api.scales) == [("ns", "wf-a", 6, FIELD_MANAGER), ("ns", "wf-m", 6, FIELD_MANAGER)]
            reasons = {e["message"].split(":")[0]: e["message"] for e in api.events}
            assert reasons["step/a"].startswith("step/a: queue lag 90 > 10/replica x 2")
            assert reasons["model/m"].startswith("model/m: queue time 60 ms > 20 ms target x 2")
            assert condition(cache)["status"] == "False"

            prom.stop()
            cache.indexes["deployments_idx"][("ns", "wf")] = cache_with({"a": 6, "m": 6}).indexes[
                "deployments_idx"
            ][("ns", "wf")]
            clock.t += 30
            await rc.cycle()
            assert len(api.scales) == 2, "nothing moves while Prometheus is away"
            cond = condition(cache)
            assert (cond["status"], cond["reason"]) == ("True", "Unreachable") and prom.url in cond["message"]

            prom.start()
            clock.t += 30

            async def recovered() -> bool:
                await rc.cycle()
                return bool(condition(cache)["status"] == "False")

            await wait_until(recovered, 60, 0.5, "MetricsUnavailable False after Prometheus is back")
            # decisions resume: a's lag 90 needs 9 of its 6; m's queue time 6 x 60 / 20 = 18, at most 10
            assert sorted(api.scales[2:]) == [
                ("ns", "wf-a", 9, FIELD_MANAGER),
                ("ns", "wf-m", 10, FIELD_MANAGER),
            ]
        finally:
            await reader.close()
