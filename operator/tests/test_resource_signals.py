"""The resource controller's sensors against a real Prometheus scraping a generated fleet: 3 workflows (the
same name in two namespaces) x 2 steps with 3 workers each, and 2 Triton pods per model server mapped to
their workflow by the controller's own relabelling. Plus the query texts and the error paths."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentscale.api.models import ScalingMode
from agentscale.resource_controller import Bounds, Part, WorkflowSnapshot, decide
from agentscale.resource_controller import promql as P
from agentscale.resource_controller.promql import Signal, Windows
from agentscale.resource_controller.signals import (
    ErrorKind,
    PartRef,
    PrometheusReader,
    Reading,
    SignalResult,
)
from agentscale.resource_controller.snapshot import PartKind
from agentscale_harness.local import free_port, wait_until
from aiohttp import web
from prom_fleet import Counting, Exporter, Latency, Pod, TritonPod, Worker, scraped
from prometheus_client.metrics import MetricWrapperBase

WORKFLOWS = [("ns-a", "shop"), ("ns-a", "search"), ("ns-b", "shop")]
STEPS = {
    "encode": Latency((0.2, 0.6, 0.9, 0.97, 1.0), 0.12),
    "rank": Latency((0.5, 0.8, 0.93, 0.99, 1.0), 0.06),
}
CLIENT = Latency((0.3, 0.7, 0.9, 0.96, 1.0), 0.05)
MODEL = "enc"


def fleet() -> tuple[list[Worker], list[TritonPod]]:
    workers, pods = [], []
    for k, (ns, wf) in enumerate(WORKFLOWS):
        for j, (step, lat) in enumerate(STEPS.items()):
            for w in range(3):  # the same stream: same lag and pending, different rates
                calls = step == "encode" and w == 0
                workers.append(
                    Worker(ns, wf, step, f"{wf}-{step}-{w}", (k + 1) * (1.0 + 0.5 * w), 10.0 * (k + 1) + j,
                           2.0 + k, lat, MODEL if calls else "", 4.0 * (k + 1), CLIENT if calls else None)
                )  # fmt: skip
        for i in range(2):
            pods.append(TritonPod(ns, wf, MODEL, f"{wf}-{MODEL}-{i}", 3.0 * (k + 1) + i, 4.0, 2.0,
                                  2000.0 * (i + 1), 5000.0 + 1000.0 * k))  # fmt: skip
    return workers, pods


def expected(workers: list[Worker], pods: list[TritonPod]) -> dict[Signal, dict[PartRef, float]]:
    out: dict[Signal, dict[PartRef, float]] = {s: {} for s in Signal}
    for ns, wf in WORKFLOWS:
        for step, lat in STEPS.items():
            mine = [w for w in workers if (w.namespace, w.workflow, w.step) == (ns, wf, step)]
            ref = PartRef(ns, wf, PartKind.step, step)
            rate = sum(w.rate for w in mine)
            out[Signal.step_arrival_rps][ref] = out[Signal.step_arrival_rps_short][ref] = rate
            out[Signal.step_queue_lag][ref] = max(w.lag for w in mine)
            out[Signal.step_queue_pending][ref] = max(w.pending for w in mine)
            out[Signal.step_p95_latency_s][ref] = lat.quantile(0.95)
            out[Signal.step_mean_latency_s][ref] = lat.mean_s
        mine_p = [p for p in pods if (p.namespace, p.workflow) == (ns, wf)]
        ref = PartRef(ns, wf, PartKind.model, MODEL)
        s, i = sum(p.success for p in mine_p), sum(p.inferences for p in mine_p)
        e, c = sum(p.executions for p in mine_p), sum(p.compute_us * p.success for p in mine_p)
        out[Signal.model_arrival_rps][ref] = out[Signal.model_arrival_rps_short][ref] = i
        out[Signal.model_queue_time_s][ref] = sum(p.queue_us * p.success for p in mine_p) / s / 1e6
        out[Signal.model_compute_time_s][ref] = c / s / 1e6
        out[Signal.model_service_time_s][ref] = c * e / (s * i) / 1e6
        out[Signal.model_mean_batch][ref] = i / e
        out[Signal.model_p95_latency_s][ref] = CLIENT.quantile(0.95)
    return out


@pytest.fixture
async def counting() -> AsyncIterator[Counting]:
    async with Counting() as c:
        yield c


def snapshot(reading: Reading, namespace: str, workflow: str, mode: ScalingMode) -> WorkflowSnapshot:
    """The policy's input for one workflow of the fleet, with the signals just read."""
    sigs = reading.workflow(namespace, workflow, {f"step/{s}": 4 for s in STEPS})
    steps = tuple(
        Part(
            PartKind.step,
            s,
            mode,
            2,
            Bounds(1, 20),
            sigs[f"step/{s}"],
            next=nxt,
            model=MODEL if i == 0 else None,
        )
        for i, (s, nxt) in enumerate(zip(STEPS, [("rank",), ()], strict=True))
    )
    model = Part(PartKind.model, MODEL, mode, 2, Bounds(1, 20), sigs[f"model/{MODEL}"])
    return WorkflowSnapshot(namespace, workflow, 0.0, 5.0, (*steps, model))


def complete(reading: Reading) -> bool:
    """Every signal has a value for every part of the fleet."""
    want = {PartKind.step: len(WORKFLOWS) * len(STEPS), PartKind.model: len(WORKFLOWS)}
    return not reading.errors and all(len(r.values) == want[s.kind] for s, r in reading.results.items())


async def settled_read(reader: PrometheusReader, exporter: Exporter, counting: Counting) -> Reading:
    """Read until every signal of every part is there, wait a full stable window of scrapes, then read once
    more with ``counting`` cleared (the requests of that one read are left in it)."""
    await wait_until(lambda: _complete_read(reader), 60, 0.5, "every signal of every part")
    await wait_until(lambda: exporter.scrapes >= 8 * len(exporter.targets), 60, 0.2, "a full stable window")
    counting.requests.clear()
    return await reader.read()


async def _complete_read(reader: PrometheusReader) -> bool:
    return complete(await reader.read())


def assert_expected(reading: Reading, want: dict[Signal, dict[PartRef, float]]) -> None:
    """Every expected part of every signal read, each value within the scrape timing's jitter."""
    for signal, values in want.items():
        got = reading.results[signal].values
        assert set(got) == set(values), signal
        # absolute rates carry the scrape timing's jitter (most in the 3 s window); ratios are exact
        rel = 0.1 if signal.name.endswith("_short") else 0.05
        for ref, v in values.items():
            assert got[ref] == pytest.approx(v, rel=rel, abs=1e-9), (signal, ref)


# -- the query texts ------------------------------------------------------------------------------------


def test_one_query_per_signal_grouped_by_namespace_workflow_and_part() -> None:
    qs = P.queries(Windows(stable_s=60, short_s=15))
    assert set(qs) == set(Signal)
    for signal, q in qs.items():
        part = P.PART_LABEL[signal.kind]
        for group in re.findall(r"\bby \(([^)]*)\)", q):
            assert {"namespace", "workflow", part} <= {g.strip() for g in group.split(",")}, (signal, q)
        assert "{" not in q, f"{signal} selects series: a query must hold every workflow at once"
    assert qs[Signal.step_queue_lag] == "max by (namespace, workflow, step) (agentscale_queue_lag)"
    assert "[15s]" in qs[Signal.step_arrival_rps_short] and "[60s]" in qs[Signal.step_arrival_rps]
    assert P.duration(2.5) == "2500ms" and P.duration(60) == "60s"


def test_the_metric_names_and_labels_read_are_the_ones_the_data_plane_exports() -> None:
    from agentscale_worker import metrics as W

    exported: dict[str, tuple[str, ...]] = {}
    for c in vars(W).values():
        if isinstance(c, MetricWrapperBase):
            name = c._name + ("_total" if c._type == "counter" else "")
            exported[name] = tuple(c._labelnames)
    for name, part in [
        (P.MESSAGES, "step"), (P.QUEUE_LAG, "step"), (P.QUEUE_PENDING, "step"), (P.STEP_LATENCY, "step"),
        (P.TRITON_CLIENT_LATENCY, "model"),
    ]:  # fmt: skip
        assert name in exported, name
        assert {P.NAMESPACE, P.WORKFLOW, part} <= set(exported[name]), (name, exported[name])
    assert all(labels[:2] == (P.NAMESPACE, P.WORKFLOW) for labels in exported.values()), exported


def test_reading_maps_into_the_policy_signals_per_slot() -> None:
    step, model = PartRef("n", "w", PartKind.step, "a"), PartRef("n", "w", PartKind.model, "m")
    values = {
        Signal.step_mean_latency_s: {step: 0.4},
        Signal.step_queue_lag: {step: 7.0},
        Signal.model_service_time_s: {model: 0.01},
        Signal.model_queue_time_s: {model: 0.0},
    }

    results = {s: SignalResult(s, values.get(s, {}), None, 0.0) for s in Signal}
    reading = Reading(0.0, 0.0, results, 0.0)
    got = reading.signals(step, slots=4)
    assert got.service_time_s == pytest.approx(0.1) and got.queue_lag == 7.0 and got.arrival_rps is None
    got_m = reading.signals(model, slots=2)
    assert (
        got_m.service_time_s == pytest.approx(0.005) and got_m.queue_time_s == 0.0 and got_m.queue_lag is None
    )
    assert reading.parts() == {step, model}
    by_key = reading.workflow("n", "w", {"step/a": 4})
    assert set(by_key) == {"step/a", "model/m"} and by_key["step/a"] == got
    assert by_key["model/m"].service_time_s == pytest.approx(0.01) and reading.workflow("n", "other") == {}
    with pytest.raises(ValueError):
        reading.signals(step, slots=0)


# -- error paths without Prometheus -----------------------------------------------------------------------


async def test_nothing_listening_every_signal_unreachable_and_no_raise(counting: Counting) -> None:
    reader = PrometheusReader(f"http://127.0.0.1:{free_port()}", session=counting.session, timeout_s=2)
    reading = await reader.read()
    assert set(reading.errors) == set(Signal)
    assert {e.kind for e in reading.errors.values()} == {ErrorKind.Unreachable}
    assert not reading.available and reading.last_success is None and reading.age_s(1e9) is None
    assert len(counting.requests) == len(Signal)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (503, "Service Unavailable", ErrorKind.HTTPError),
        (422, '{"status":"error","errorType":"execution","error":"boom"}', ErrorKind.QueryError),
        (200, "<html>a proxy page</html>", ErrorKind.InvalidResponse),
        (200, '{"status":"success","data":{"resultType":"matrix","result":[]}}', ErrorKind.InvalidResponse),
        (200, '{"status":"success","data":{"resultType":"vector","result":[]}}', ErrorKind.NoSeries),
    ],
)
async def test_bad_answers_become_errors_per_signal(status: int, body: str, kind: ErrorKind) -> None:
    """A unit test of the reader's error handling: a tiny HTTP server answering one way to every query."""

    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/query", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with PrometheusReader(f"http://127.0.0.1:{port}/") as reader:
            reading = await reader.read()
        assert {e.kind for e in reading.errors.values()} == {kind} and set(reading.errors) == set(Signal)
        assert reading.available == (kind == ErrorKind.NoSeries)
        assert all(str(e).startswith(kind) for e in reading.errors.values())
    finally:
        await runner.cleanup()


async def test_a_prometheus_that_never_answers_is_cut_off_by_the_request_timeout() -> None:
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_post("/api/v1/query", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with PrometheusReader(f"http://127.0.0.1:{port}", timeout_s=0.3) as reader:
            reading = await reader.read()
        assert {e.kind for e in reading.errors.values()} == {ErrorKind.Unreachable}
        assert all("timed out after 0.3 s" in e.message for e in reading.errors.values())
    finally:
        release.set()
        await runner.cleanup()


# -- a real Prometheus -------------------------------------------------------------------------------------


async def test_real_prometheus_max_lag_rates_quantiles_one_query_each_and_fail_static(
    tmp_path: Path, counting: Counting
) -> None:
    workers, pods = fleet()
    targets: list[list[Pod]] = [[w] for w in workers]
    exporter = Exporter(targets + [[p] for p in pods])  # a target per pod
    want = expected(workers, pods)
    with scraped(exporter, tmp_path / "prom", interval_s=1.0) as prom:
        reader = PrometheusReader(prom.url, Windows(stable_s=5, short_s=3), session=counting.session)
        reading = await settled_read(reader, exporter, counting)
        readings: list[Reading] = []

        async def present() -> bool:
            readings.append(await reader.read())
            return complete(readings[-1])

        assert counting.requests == ["POST /api/v1/query"] * len(Signal), "one query per signal per read"
        assert not reading.errors and reading.available and reading.last_success == reading.started
        assert reading.parts() == {r for values in want.values() for r in values}
        assert_expected(reading, want)
        # lag and pending: the max over a step's three workers, not their sum
        for ref, lag in want[Signal.step_queue_lag].items():
            assert reading.results[Signal.step_queue_lag].values[ref] == lag
        shop_a, shop_b = (
            PartRef("ns-a", "shop", PartKind.step, "rank"),
            PartRef("ns-b", "shop", PartKind.step, "rank"),
        )
        assert reading.value(Signal.step_queue_lag, shop_a) != reading.value(Signal.step_queue_lag, shop_b)
        # Triton's own model label ("triton-name") was replaced by the pod's model server label
        assert all(r.name == MODEL for r in reading.results[Signal.model_queue_time_s].values)
        sig = reading.signals(PartRef("ns-b", "shop", PartKind.step, "encode"), slots=4)
        assert sig.service_time_s == pytest.approx(STEPS["encode"].mean_s / 4, rel=0.05)
        # what the policy gets: every input of modes queue and slo known, so nothing is "missing"
        for mode in (ScalingMode.queue, ScalingMode.slo):
            outcome = decide(snapshot(reading, "ns-b", "shop", mode), {})
            assert len(outcome.decisions) == len(STEPS) + 1
            assert all(d.missing == () for d in outcome.decisions), outcome.decisions
        ok_at = reading.started

        prom.stop()
        down = await reader.read()  # must not raise
        assert set(down.errors) == set(Signal) and not down.available
        assert {e.kind for e in down.errors.values()} == {ErrorKind.Unreachable}
        assert all(not r.values and r.last_success == ok_at for r in down.results.values())
        assert down.last_success == ok_at and down.age_s(down.started) == down.started - ok_at

        prom.start()
        readings.clear()
        await wait_until(present, 60, 0.5, "values again after the restart")
        back = readings[-1]
        assert back.available and back.last_success == back.started > ok_at
        got_lag = back.results[Signal.step_queue_lag].values
        assert got_lag == want[Signal.step_queue_lag]


def test_expected_values_are_distinct_enough_to_catch_a_sum() -> None:
    workers, pods = fleet()
    want = expected(workers, pods)
    for ref, lag in want[Signal.step_queue_lag].items():
        same = [
            w.lag
            for w in workers
            if (w.namespace, w.workflow, w.step) == (ref.namespace, ref.workflow, ref.name)
        ]
        assert len(same) == 3 and sum(same) != lag
    assert all(math.isfinite(v) and v > 0 for vs in want.values() for v in vs.values())
