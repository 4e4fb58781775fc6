"""Scale from zero through a real Prometheus: a step at zero replicas has no worker, so only its gateway
reports its lag; the controller reads it (max with the workers' series where both exist), knows the step's
arrival rate, and wakes the step in one cycle."""

from __future__ import annotations

from pathlib import Path

import pytest
from agentscale.api.models import ScalingMode
from agentscale.resource_controller import Bounds, Part, WorkflowSnapshot, decide
from agentscale.resource_controller.promql import Signal, Windows
from agentscale.resource_controller.signals import PartRef, PrometheusReader, Reading
from agentscale.resource_controller.snapshot import PartKind
from agentscale_harness.local import wait_until
from prom_fleet import Counting, Exporter, GatewayPod, Latency, Worker, scraped

NS, WF = "ns-z", "shop"
BUSY, ASLEEP = "encode", "rank"


def part(reading: Reading, step: str, replicas: int, mode: ScalingMode) -> Part:
    sigs = reading.workflow(NS, WF, {f"step/{step}": 1})[f"step/{step}"]
    return Part(PartKind.step, step, mode, replicas, Bounds(0, 5), sigs)


@pytest.mark.parametrize("mode", [ScalingMode.queue, ScalingMode.slo])
async def test_the_gateways_lag_wakes_a_step_at_zero(tmp_path: Path, mode: ScalingMode) -> None:
    lat = Latency((0.5, 0.8, 0.93, 0.99, 1.0), 0.06)
    workers = [Worker(NS, WF, BUSY, f"{WF}-{BUSY}-{i}", 2.0, 3.0, 1.0, lat) for i in range(2)]
    gateway = GatewayPod(NS, WF, f"{WF}-gateway-0", ((BUSY, 3.0), (ASLEEP, 7.0)))
    exporter = Exporter([[w] for w in workers] + [[gateway]])
    async with Counting() as counting:
        with scraped(exporter, tmp_path / "prom", interval_s=1.0) as prom:
            reader = PrometheusReader(prom.url, Windows(stable_s=5, short_s=3), session=counting.session)
            asleep = PartRef(NS, WF, PartKind.step, ASLEEP)
            busy = PartRef(NS, WF, PartKind.step, BUSY)
            readings: list[Reading] = []

            async def known() -> bool:
                readings.append(await reader.read())
                r = readings[-1]
                return all(
                    r.value(s, asleep) is not None for s in (Signal.step_queue_lag, Signal.step_arrival_rps)
                )

            await wait_until(known, 60, 0.5, "the sleeping step's lag and arrival rate")
            await wait_until(
                lambda: exporter.scrapes >= 8 * len(exporter.targets), 60, 0.2, "a stable window"
            )
            reading = await reader.read()
    assert reading.value(Signal.step_queue_lag, asleep) == 7.0
    assert reading.value(Signal.step_arrival_rps, asleep) == pytest.approx(0.0, abs=1e-9)  # a constant lag
    # where workers exist too, the gateway's series changes nothing: the max of equal values
    assert reading.value(Signal.step_queue_lag, busy) == 3.0
    assert reading.value(Signal.step_arrival_rps, busy) == pytest.approx(4.0, rel=0.05)

    outcome = decide(WorkflowSnapshot(NS, WF, 0.0, 5.0, (part(reading, ASLEEP, 0, mode),)), {})
    (d,) = outcome.decisions
    # woken in this one cycle (by the wake rule or by the lag's own sizing, whichever asks more)
    assert d.from_replicas == 0 and d.to_replicas >= 1 and d.reason.endswith(f"0 -> {d.to_replicas}"), d
