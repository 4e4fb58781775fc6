"""The resource controller's loop wired to its sensors: a reading mapped onto each workflow's parts (slots per
replica), fail static (what is held, which workflows are affected), the MetricsUnavailable condition (written
only when it changes, never over the workflow controller's conditions), and the controller's own metrics.

Readings here are plain values built from ``SignalResult``s (what ``PrometheusReader.read`` returns); the
reader against a real Prometheus is tested in test_resource_signals.py and e2e/tests/test_rc_signals.py.
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import pytest
from agentscale.api.models import ScalingMode
from agentscale.resource_controller import metrics as M
from agentscale.resource_controller.actuator import FIELD_MANAGER
from agentscale.resource_controller.leader import LeaseConfig
from agentscale.resource_controller.loop import (
    LoopSettings,
    ResourceController,
    hold_down,
    prometheus_url,
    signals_for,
    slots_of,
    snapshot_of,
)
from agentscale.resource_controller.promql import Signal
from agentscale.resource_controller.signals import (
    ErrorKind,
    PartRef,
    Reading,
    SignalError,
    SignalResult,
    assess,
)
from agentscale.resource_controller.snapshot import Bounds, Decision, Part, PartKind, Rule, WorkflowSnapshot
from agentscale.status import (
    METRICS_UNAVAILABLE,
    DeploymentSummary,
    Observed,
    build_status,
    metrics_condition,
    status_patch,
)
from agentscale_harness.local import free_port
from conftest import load_workflow, minimal_spec
from test_resource_leader import NAME, NS, FakeClock
from test_resource_loop import FakeApi, cache_with, deployment

# -- readings as plain values ------------------------------------------------------------------------------


def ref(part: str, ns: str = "ns", wf: str = "wf") -> PartRef:
    kind, name = part.split("/")
    return PartRef(ns, wf, PartKind(kind), name)


def reading(
    values: dict[Signal, dict[PartRef, float]] | None = None,
    errors: dict[Signal, SignalError] | None = None,
    last_success: float | None = 100.0,
) -> Reading:
    values, errors = values or {}, errors or {}
    results = {}
    for s in Signal:
        v = values.get(s, {})
        err = errors.get(s) or (None if v else SignalError(ErrorKind.NoSeries, f"no series for {s}"))
        results[s] = SignalResult(s, v, err, 0.01, len(v))
    return Reading(100.0, 0.1, results, last_success)


def lag(errors: dict[Signal, SignalError] | None = None, **by_part: float) -> Reading:
    """Every step signal for steps given as ``a=12`` (their queue lag) in workflow ns/wf: no arrivals,
    nothing pending, 100 ms a message."""
    steps = [ref(f"step/{p}") for p in by_part]
    return reading(
        {
            Signal.step_queue_lag: {r: x for r, x in zip(steps, by_part.values(), strict=True)},
            Signal.step_queue_pending: dict.fromkeys(steps, 0.0),
            Signal.step_arrival_rps: dict.fromkeys(steps, 0.0),
            Signal.step_arrival_rps_short: dict.fromkeys(steps, 0.0),
            Signal.step_mean_latency_s: dict.fromkeys(steps, 0.1),
            Signal.step_p95_latency_s: dict.fromkeys(steps, 0.2),
        },
        errors,
    )


UNREACHABLE = reading(
    errors={s: SignalError(ErrorKind.Unreachable, "Prometheus at http://p:9090: refused") for s in Signal},
    last_success=None,
)


def part(
    name: str, replicas: int, mode: ScalingMode = ScalingMode.queue, kind: PartKind = PartKind.step
) -> Part:
    return Part(kind, name, mode, replicas, Bounds(0, 10))


def snap(*parts: Part) -> WorkflowSnapshot:
    return WorkflowSnapshot("ns", "wf", 0.0, 1.0, parts)


# -- assess: which workflows have their metrics ------------------------------------------------------------

QUEUE_A, QUEUE_B = part("a", 2), part("b", 3)
AT_ZERO = part("z", 0)
FIXED = part("f", 2, ScalingMode.fixed)
MODEL = part("m", 1, ScalingMode.slo, PartKind.model)

# (case, reading, parts, unavailable (None: not assessed), reason, affected, in the message)
ASSESS = [
    ("no controlled part", lag(a=1), (FIXED,), None, "", set(), ""),
    ("every controlled part has series", lag(a=1, b=0), (QUEUE_A, QUEUE_B, FIXED), False,
     "MetricsAvailable", set(), "Prometheus answered every query"),
    ("unreachable: every controlled part", UNREACHABLE, (QUEUE_A, FIXED, MODEL), True, "Unreachable",
     {"step/a", "model/m"}, "13 of 13 Prometheus queries failed: Unreachable: Prometheus at http://p:9090"),
    ("one query failed", reading({Signal.step_queue_lag: {ref("step/a"): 1.0}},
                                 {Signal.step_p95_latency_s: SignalError(ErrorKind.QueryError, "bad")}),
     (QUEUE_A,), True, "QueryError", {"step/a"}, "1 of 13 Prometheus queries failed: QueryError: bad"),
    ("answered, nothing for one part", lag(a=1), (QUEUE_A, QUEUE_B), True, "NoSeries", {"step/b"},
     'no series for step/b (looked for {namespace="ns", workflow="wf", step="b"})'),
    ("answered, nothing at all", reading(), (QUEUE_A, MODEL), True, "NoSeries", {"step/a", "model/m"},
     "step/a, model/m"),
    ("a part at zero runs nothing to report", lag(a=1), (QUEUE_A, AT_ZERO), False, "MetricsAvailable", set(),
     ""),
    ("the same name in another namespace is not ours",
     reading({Signal.step_queue_lag: {ref("step/a", ns="other"): 5.0}}), (QUEUE_A,), True, "NoSeries",
     {"step/a"}, "step/a"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reading_", "parts", "unavailable", "reason", "affected", "text"),
    [c[1:] for c in ASSESS],
    ids=[c[0] for c in ASSESS],
)
def test_assess(
    reading_: Reading,
    parts: tuple[Part, ...],
    unavailable: bool | None,
    reason: str,
    affected: set[str],
    text: str,
) -> None:
    health = assess(reading_, snap(*parts))
    if unavailable is None:
        assert health is None
        return
    assert health is not None
    assert (health.unavailable, health.reason, set(health.affected)) == (unavailable, reason, affected)
    assert text in health.message
    if unavailable:
        assert "not scaling down" in health.message


# -- hold_down: fail static on the decisions ---------------------------------------------------------------


def d(target: str, old: int, new: int, rule: Rule = Rule.QueueLag) -> Decision:
    return Decision(target, old, new, rule, f"why; {old} -> {new}")


DOWN, UP, BOUNDS_DOWN, OTHER_DOWN = (
    d("step/a", 4, 2),
    d("step/b", 3, 5),
    d("step/c", 9, 6, Rule.Bounds),
    d("step/x", 4, 2),
)
AFFECTED = frozenset({"step/a", "step/b", "step/c"})

# (case, unavailable, decisions, expected (target, to, rule), held)
HOLD = [
    ("available: as decided", False, [DOWN, UP], [("step/a", 2, Rule.QueueLag), ("step/b", 5, Rule.QueueLag)],
     set()),
    ("unavailable: no scale-down", True, [DOWN], [("step/a", 4, Rule.FailStatic)], {"step/a"}),
    ("unavailable: up still allowed", True, [UP], [("step/b", 5, Rule.QueueLag)], set()),
    ("unavailable: the spec's bounds still win", True, [BOUNDS_DOWN], [("step/c", 6, Rule.Bounds)], set()),
    ("unavailable: another part may go down", True, [OTHER_DOWN], [("step/x", 2, Rule.QueueLag)], set()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("unavailable", "decisions", "expected", "held"), [c[1:] for c in HOLD], ids=[c[0] for c in HOLD]
)
def test_hold_down(
    unavailable: bool, decisions: list[Decision], expected: list[tuple[str, int, Rule]], held: set[str]
) -> None:
    from agentscale.resource_controller.signals import MetricsHealth

    health = MetricsHealth(unavailable, "Unreachable" if unavailable else "MetricsAvailable", "m", AFFECTED)
    out, got_held = hold_down(decisions, health)
    assert [(x.target, x.to_replicas, x.rule) for x in out] == expected
    assert got_held == held
    for x in out:
        if x.target in held:
            assert x.reason.startswith("metrics unavailable (Unreachable), not scaling down (why; 4 -> 2)")
            assert x.reason.endswith("stays 4")
    assert hold_down(decisions, None) == (decisions, set())


# -- mapping: series to a workflow's parts, per replica ----------------------------------------------------

SPEC = minimal_spec(
    steps=[
        {"name": "a", "model": "m", "concurrency": 4, "next": ["b"]},
        {"name": "b", "concurrency": 1},
    ],
    models=[{"name": "m", "modelRepository": "/models", "instanceGroups": [{"count": 2}, {"count": 1}]}],
)


def test_series_map_to_their_workflows_parts_with_slots_per_replica() -> None:
    wf = load_workflow({"metadata": {"name": "wf", "namespace": "ns"}, "spec": SPEC})
    assert slots_of(wf) == {"step/a": 4, "step/b": 1, "model/m": 3}
    r = reading(
        {
            Signal.step_mean_latency_s: {ref("step/a"): 0.4, ref("step/b"): 0.4, ref("step/a", wf="x"): 9.0},
            Signal.step_queue_lag: {ref("step/a"): 30.0, ref("step/a", ns="ns2"): 99.0},
            Signal.model_service_time_s: {ref("model/m"): 0.03},
        }
    )
    sig = signals_for(r, wf)
    assert set(sig) == {"step/a", "step/b", "model/m"}
    assert sig["step/a"].service_time_s == pytest.approx(0.1) and sig["step/a"].queue_lag == 30.0
    assert sig["step/b"].service_time_s == pytest.approx(0.4) and sig["step/b"].queue_lag is None
    assert sig["model/m"].service_time_s == pytest.approx(0.01)
    parts = snapshot_of(wf, {}, 0.0, sig).by_key()
    assert parts["step/a"].signals.queue_lag == 30.0 and parts["model/m"].signals.arrival_rps is None
    assert signals_for(None, wf) == {}


# (case, the series' part, the snapshot part that gets its lag, or None)
MAPPING = [
    ("same namespace, workflow and step", ref("step/a"), "step/a"),
    ("another namespace, same names", ref("step/a", ns="ns2"), None),
    ("another workflow, same namespace", ref("step/a", wf="wf2"), None),
    ("a step the spec does not have", ref("step/zz"), None),
    ("the model label names a model server", ref("model/m"), "model/m"),
]


@pytest.mark.parametrize(("series", "gets"), [c[1:] for c in MAPPING], ids=[c[0] for c in MAPPING])
def test_a_series_maps_to_the_part_its_labels_name(series: PartRef, gets: str | None) -> None:
    wf = load_workflow({"metadata": {"name": "wf", "namespace": "ns"}, "spec": SPEC})
    signal = Signal.step_queue_lag if series.kind == PartKind.step else Signal.model_queue_time_s
    snap = snapshot_of(wf, {}, 0.0, signals_for(reading({signal: {series: 7.0}}), wf))
    got = {
        p.key
        for p in snap.parts
        if (p.signals.queue_lag if p.kind == PartKind.step else p.signals.queue_time_s) == 7.0
    }
    assert got == ({gets} if gets else set())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("  ", None),
        ("http://prometheus:9090", "http://prometheus:9090"),
        ("https://p/", "https://p/"),
    ],
)
def test_prometheus_url(value: str, expected: str | None) -> None:
    assert prometheus_url({"AGENTSCALE_PROMETHEUS_URL": value}) == expected


@pytest.mark.parametrize("value", ["prometheus:9090", "http://", "ftp://p"])
def test_a_bad_prometheus_url_names_the_variable_and_the_fix(value: str) -> None:
    with pytest.raises(ValueError, match=r"AGENTSCALE_PROMETHEUS_URL=.*e\.g\. http://prometheus:9090"):
        prometheus_url({"AGENTSCALE_PROMETHEUS_URL": value})


def test_settings_from_env() -> None:
    s = LoopSettings.from_env({"AGENTSCALE_PROMETHEUS_URL": "http://p:9090", "AGENTSCALE_METRICS_PORT": "0"})
    assert (s.prometheus_url, s.metrics_port) == ("http://p:9090", 0)
    assert (LoopSettings.from_env({}).prometheus_url, LoopSettings.from_env({}).metrics_port) == (None, 9090)


@pytest.mark.parametrize("value", ["x", "-1", "70000"])
def test_a_bad_metrics_port_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="AGENTSCALE_METRICS_PORT"):
        M.port_from_env({"AGENTSCALE_METRICS_PORT": value})


# -- the loop with readings: scale, fail static, the condition, recover ------------------------------------

QUEUE = {"mode": "queue", "minReplicas": 1, "maxReplicas": 8, "targetQueueLagPerReplica": 10}
STEPS = [{"name": "a", "scaling": QUEUE}, {"name": "h", "scaling": {"mode": "hpa", "maxReplicas": 4}}]
WF_SPEC = minimal_spec(steps=STEPS, models=[])


class Readings:
    """Hands the loop one prepared reading per read (what PrometheusReader.read would answer)."""

    def __init__(self) -> None:
        self.next: Reading = UNREACHABLE
        self.url = "http://p:9090"
        self.reads = 0

    async def read(self) -> Reading:
        self.reads += 1
        return self.next

    async def close(self) -> None:
        return None


class StatusApi(FakeApi):
    """FakeApi plus the status subresource's server-side apply, fed back into the cache as the watch would."""

    def __init__(self, clock: FakeClock, cache: Any) -> None:
        super().__init__(clock)
        self.cache = cache
        self.applied: list[dict[str, Any]] = []

    async def apply_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Any, field_manager: str
    ) -> None:
        self.applied.append({"status": status, "manager": field_manager})
        record = self.cache.indexes["agentworkflows_idx"][(namespace, name)][0]
        conds = {c["type"]: c for c in record["status"].get("conditions", [])}
        conds.update({c["type"]: c for c in status["conditions"]})  # a list-map merges by key
        record["status"] = {**record["status"], "conditions": list(conds.values())}


def condition(cache: Any) -> dict[str, Any]:
    record = cache.indexes["agentworkflows_idx"][("ns", "wf")][0]
    return next(c for c in record["status"].get("conditions", []) if c["type"] == METRICS_UNAVAILABLE)


def with_replicas(cache: Any, a: int) -> None:
    """The Deployments as the watch would show them after a scale."""
    cache.indexes["deployments_idx"][("ns", "wf")] = [deployment("a", a), deployment("h", 1)]


async def test_lag_scales_up_prometheus_gone_holds_and_reports_recovery_clears() -> None:
    clock = FakeClock()
    cache = cache_with({"a": 1, "h": 1}, spec=WF_SPEC)
    cache.indexes["agentworkflows_idx"][("ns", "wf")][0]["status"] = {
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllReplicasReady"}]
    }
    api, readings = StatusApi(clock, cache), Readings()
    settings = LoopSettings(lease=LeaseConfig(NS, NAME), prometheus_url="http://p:9090")
    rc = ResourceController(api, cache, settings, clock=clock, reader=readings)
    rc.actuator.may_write = lambda: True

    def metric(name: str, **labels: str) -> float:
        return rc.metrics.registry.get_sample_value(name, labels) or 0.0

    # Lag 45 at 10 per replica: 1 -> 5 (the step limit allows 4 more), with the reason, an Event, status.
    readings.next = lag(a=45)
    await rc.cycle()
    assert api.scales == [("ns", "wf-a", 5, FIELD_MANAGER)]
    assert api.statuses[-1]["status"]["lastScalingDecision"]["reason"].startswith(
        "queue lag 45 > 10/replica x 1"
    )
    assert [e["reason"] for e in api.events] == ["Scaled"]
    cond = condition(cache)
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("False", "MetricsAvailable", 1)
    assert api.applied[-1]["manager"] == FIELD_MANAGER and len(api.applied[-1]["status"]["conditions"]) == 1
    assert metric("agentscale_rc_decisions_total", direction="up", rule="QueueLag") == 1
    with_replicas(cache, 5)

    # Unchanged health: nothing more is written. Lag falls, but Prometheus then goes away.
    clock.t += 15
    readings.next = lag(a=45)
    await rc.cycle()
    assert len(api.applied) == 1 and len(api.scales) == 1
    readings.next = UNREACHABLE
    for _ in range(12):  # 3 minutes: past the stabilization window and the cooldowns
        clock.t += 15
        await rc.cycle()
    assert len(api.scales) == 1, "fail static: nothing moves"
    cond = condition(cache)
    assert (cond["status"], cond["reason"]) == ("True", "Unreachable")
    assert "Prometheus at http://p:9090: refused" in cond["message"]
    assert len(api.applied) == 2, "written once when it turned True"
    warning = api.events[-1]
    assert (warning["type"], warning["reason"]) == ("Warning", METRICS_UNAVAILABLE)
    assert [
        c["type"] for c in cache.indexes["agentworkflows_idx"][("ns", "wf")][0]["status"]["conditions"]
    ] == [
        "Ready",
        METRICS_UNAVAILABLE,
    ], "the workflow controller's conditions are left as they were"
    assert metric("agentscale_rc_query_errors_total", signal="step_queue_lag", kind="Unreachable") == 12

    # The workflow controller's merge patch replaces the list without our entry: written again next cycle,
    # as it was (same transition time), and without a second Warning for the same outage.
    record = cache.indexes["agentworkflows_idx"][("ns", "wf")][0]
    since = rc.reported[("ns", "wf")]["lastTransitionTime"] = "2026-01-01T00:00:00Z"  # long ago
    record["status"] = {"conditions": [{"type": "Ready", "status": "True", "reason": "AllReplicasReady"}]}
    events_before = len(api.events)
    clock.t += 15
    await rc.cycle()
    cond = condition(cache)
    assert (cond["status"], cond["lastTransitionTime"]) == ("True", since)
    assert len(api.applied) == 3 and len(api.events) == events_before
    assert metric("agentscale_rc_decisions_total", direction="hold", rule="FailStatic") >= 13

    # Prometheus is back with a low lag: the condition clears at once (a Normal Event), decisions resume.
    clock.t += 15
    readings.next = lag(a=0)
    await rc.cycle()
    cond = condition(cache)
    assert (cond["status"], cond["reason"]) == ("False", "MetricsAvailable")
    assert (api.events[-1]["type"], api.events[-1]["reason"]) == ("Normal", "MetricsAvailable")
    for _ in range(12):
        clock.t += 15
        await rc.cycle()
        with_replicas(cache, api.scales[-1][2])
    assert api.scales[-1][2] < 5, "scales down again once signals are back"
    assert api.scales[-1][2] >= 1 and all(s[1] == "wf-a" for s in api.scales)


async def test_a_failed_query_holds_every_controlled_part_even_one_with_all_its_signals() -> None:
    clock = FakeClock()
    cache = cache_with({"a": 6, "h": 1}, spec=WF_SPEC)
    api, readings = StatusApi(clock, cache), Readings()
    rc = ResourceController(
        api, cache, LoopSettings(lease=LeaseConfig(NS, NAME)), clock=clock, reader=readings
    )
    rc.actuator.may_write = lambda: True
    readings.next = lag(a=60)  # 6 replicas' worth: holds, and the policy remembers it
    for _ in range(2):
        await rc.cycle()
        clock.t += 15
    broken = {Signal.model_p95_latency_s: SignalError(ErrorKind.QueryError, "execution: too many samples")}
    readings.next = lag(broken, a=0)  # step a has every signal: the policy alone would scale it down
    for _ in range(12):
        await rc.cycle()
        clock.t += 15
    assert api.scales == [] and condition(cache)["reason"] == "QueryError"
    assert rc.metrics.registry.get_sample_value(
        "agentscale_rc_decisions_total", {"direction": "hold", "rule": "FailStatic"}
    )
    readings.next = lag(broken, a=200)  # up is still allowed
    await rc.cycle()
    assert api.scales == [("ns", "wf-a", 8, FIELD_MANAGER)]
    with_replicas(cache, 8)
    readings.next = lag(a=0)  # recovered: down resumes after the window
    for _ in range(12):
        clock.t += 15
        await rc.cycle()
        with_replicas(cache, api.scales[-1][2])
    assert api.scales[-1][2] < 8 and condition(cache)["status"] == "False"


async def test_no_series_counts_once_the_replicas_have_been_ready_for_the_grace_period() -> None:
    clock = FakeClock()
    cache = cache_with({"a": 2, "h": 1}, spec=WF_SPEC)
    cache.indexes["deployments_idx"][("ns", "wf")][0] = DeploymentSummary(
        "wf-a", "step", "a", 2, 0, 2, True, False, "h"
    )  # two replicas, none ready yet
    api, readings = StatusApi(clock, cache), Readings()
    settings = LoopSettings(lease=LeaseConfig(NS, NAME), no_series_grace_s=60)
    rc = ResourceController(api, cache, settings, clock=clock, reader=readings)
    rc.actuator.may_write = lambda: True
    readings.next = lag(b=3)  # Prometheus answers, with nothing for step a
    for _ in range(6):  # not ready: its silence is expected
        await rc.cycle()
        clock.t += 15
    assert condition(cache)["status"] == "False"
    with_replicas(cache, 2)  # now ready: the grace runs from the next cycle
    seen = []
    for _ in range(6):
        await rc.cycle()
        seen.append(condition(cache)["status"])
        clock.t += 15
    assert seen == ["False"] * 4 + ["True"] * 2  # ready at t, t+15 .. t+45 within 60 s; t+60 is not
    cond = condition(cache)
    assert cond["reason"] == "NoSeries" and 'step="a"' in cond["message"]
    assert api.scales == []
    readings.next = lag(a=0)
    await rc.cycle()
    assert condition(cache)["status"] == "False"


async def test_without_a_url_nothing_is_read_and_no_condition_is_written() -> None:
    clock = FakeClock()
    cache = cache_with({"a": 1, "h": 1}, spec=WF_SPEC)
    api = StatusApi(clock, cache)
    rc = ResourceController(api, cache, LoopSettings(lease=LeaseConfig(NS, NAME)), clock=clock)
    rc.actuator.may_write = lambda: True
    assert rc.reader is None
    for _ in range(3):
        await rc.cycle()
        clock.t += 15
    assert api.applied == [] and api.scales == []
    assert math.isnan(
        rc.metrics.registry.get_sample_value("agentscale_rc_seconds_since_last_successful_read")
    )


# -- the workflow controller's status keeps the resource controller's condition ----------------------------


def test_the_workflow_controllers_status_keeps_metrics_unavailable_from_the_live_status() -> None:
    wf = load_workflow({"metadata": {"name": "wf", "namespace": "ns"}, "spec": WF_SPEC})
    mine = metrics_condition({}, True, "Unreachable", "refused", 3).model_dump(mode="json")
    live = {"conditions": [{"type": "Ready", "status": "False"}, mine]}
    written_before = {"conditions": [{"type": "Ready", "status": "False"}]}  # the WC's own last write
    new = build_status(Observed(generation=3, workflow=wf, previous=written_before, live=live)).to_dict()
    kept = [c for c in new["conditions"] if c["type"] == METRICS_UNAVAILABLE]
    assert kept == [mine]
    patch = status_patch(written_before, new)
    assert patch is not None and mine in patch["conditions"], "a list is replaced whole: ours goes with it"
    invalid = build_status(Observed(generation=3, workflow=None, problems=["x"], live=live)).to_dict()
    assert mine in invalid["conditions"]
    # Without the live status, nothing is invented.
    alone = build_status(Observed(generation=3, workflow=wf, previous=written_before)).to_dict()
    assert METRICS_UNAVAILABLE not in {c["type"] for c in alone["conditions"]}


def test_metrics_condition_keeps_its_transition_time_while_the_status_holds() -> None:
    first = metrics_condition({}, True, "Unreachable", "a", 1)
    live = {"conditions": [{**first.model_dump(mode="json"), "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    again = metrics_condition(live, True, "Unreachable", "b", 2)
    assert (again.lastTransitionTime, again.message, again.observedGeneration) == (
        "2026-01-01T00:00:00Z",
        "b",
        2,
    )
    assert (
        metrics_condition(live, False, "MetricsAvailable", "", 2).lastTransitionTime != "2026-01-01T00:00:00Z"
    )


# -- the controller's own metrics, served ------------------------------------------------------------------


async def test_metrics_are_served_and_a_busy_port_does_not_stop_the_operator() -> None:
    m = M.ControllerMetrics(wall=lambda: 130.0)
    m.read(100.0, 110.0, [("step_queue_lag", "Unreachable")])
    m.decided([d("step/a", 1, 3), d("step/b", 2, 1), d("step/c", 2, 2, Rule.Tolerance)], not_done={"step/b"})
    m.leader.set(1)
    port = free_port()
    runner = await M.serve(m, port, host="127.0.0.1")
    assert runner is not None
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        assert r.status == 200
        for line in [
            'agentscale_rc_query_errors_total{kind="Unreachable",signal="step_queue_lag"} 1.0',
            'agentscale_rc_decisions_total{direction="up",rule="QueueLag"} 1.0',
            'agentscale_rc_decisions_total{direction="hold",rule="QueueLag"} 1.0',  # the write that failed
            'agentscale_rc_decisions_total{direction="hold",rule="Tolerance"} 1.0',
            "agentscale_rc_seconds_since_last_successful_read 20.0",
            "agentscale_rc_leader 1.0",
            "agentscale_rc_cycle_duration_seconds_count 0.0",
        ]:
            assert line in text, line
        assert await M.serve(M.ControllerMetrics(), port, host="127.0.0.1") is None  # taken: logged, no raise
    finally:
        await runner.cleanup()
    assert await M.serve(m, 0) is None


def test_seconds_since_last_success_counts_from_the_first_try_until_one_succeeds() -> None:
    now = [200.0]
    m = M.ControllerMetrics(wall=lambda: now[0])
    assert math.isnan(m._age())
    m.read(150.0, None, [])
    assert m._age() == 50.0
    m.read(190.0, 190.0, [])
    now[0] = 195.0
    assert m._age() == 5.0
