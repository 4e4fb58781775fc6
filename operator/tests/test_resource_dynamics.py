"""The resource controller over many cycles: no flapping, panic, scale to zero and back, the forecast and
feed-forward down the DAG, and properties that hold for any input (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from agentscale.api.models import ScalingMode
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.decide import decide
from agentscale.resource_controller.forecast import holt_forecast, holt_update, planned_rates
from agentscale.resource_controller.snapshot import (
    Bounds,
    Decision,
    Part,
    PartKind,
    Rule,
    Signals,
    WorkflowSnapshot,
)
from agentscale.resource_controller.state import PartState
from hypothesis import given, settings
from hypothesis import strategies as st

QUEUE, SLO = ScalingMode.queue, ScalingMode.slo


def part(replicas: int, signals: Signals, **kw: Any) -> Part:
    kind = kw.pop("kind", PartKind.step)
    return Part(
        kind,
        kw.pop("name", "a"),
        kw.pop("mode", QUEUE),
        replicas,
        kw.pop("bounds", Bounds(1, 50)),
        signals,
        **kw,
    )


def run(
    signals_at: Callable[[float], Signals],
    replicas: int,
    times: list[float],
    cfg: PolicyConfig | None = None,
    **kw: Any,
) -> list[Decision]:
    """Cycle the policy, applying each decision, and return them."""
    state: dict[str, PartState] = {}
    out = []
    for t in times:
        p = part(replicas, signals_at(t), **kw)
        res = decide(WorkflowSnapshot("ns", "wf", t, 1.0, (p,)), state, cfg)
        state = res.state
        (d,) = res.decisions
        out.append(d)
        replicas = d.to_replicas
    return out


EVERY_15S = [15.0 * i for i in range(40)]  # ten minutes


def reversals(ds: list[Decision]) -> int:
    moves = [d.direction for d in ds if d.changed]
    return sum(1 for a, b in itertools.pairwise(moves) if a != b)


def test_oscillating_lag_does_not_flap() -> None:
    # the backlog swings between 400 and nothing every cycle for five minutes, then stays empty
    def signals(t: float) -> Signals:
        lag = 400.0 if t < 300 and int(t / 15) % 2 == 0 else 0.0
        return Signals(arrival_rps=70.0, service_time_s=0.01, queue_lag=lag)  # 1 replica for the arrivals

    ds = run(signals, 1, EVERY_15S)
    counts = [d.to_replicas for d in ds]
    during = counts[: 300 // 15]
    assert during == sorted(during)  # only up while it oscillates
    assert max(counts) == 20  # 400 / 20 per replica
    assert reversals(ds) == 1  # up, then (after it stops) down: never back and forth
    assert counts[-1] < 20  # and it does come down once the window has passed without a burst
    first_down = next(d for d in ds if d.to_replicas < d.from_replicas)
    assert first_down.reason.endswith("20 -> 10") and first_down.rule == Rule.MaxStep


def test_noise_within_the_tolerance_band_never_moves() -> None:
    # 20 replicas; the lag wobbles between what 19 and 21 replicas hold (+-5%)
    def signals(t: float) -> Signals:
        return Signals(arrival_rps=1.0, service_time_s=0.01, queue_lag=420.0 if int(t / 15) % 2 else 380.0)

    ds = run(signals, 20, EVERY_15S)
    assert all(not d.changed for d in ds)
    assert {d.rule for d in ds} <= {Rule.Tolerance, Rule.Stabilization}


def test_panic_scales_up_at_once_holds_and_leaves_after_a_stable_window() -> None:
    # 2 replicas for 14/s at 100 ms per request; a burst of 70/s on the short window needs 70 x 0.1 / 0.7 = 10
    def signals(t: float) -> Signals:
        short = 70.0 if 100 <= t < 130 else 1.0
        return Signals(arrival_rps=14.0, arrival_rps_short=short, service_time_s=0.1, queue_lag=0.0)

    cfg = PolicyConfig(
        cooldown_up_s=600, target_utilization=0.7
    )  # panic ignores cooldown; ordinary scale-up would be blocked
    times = [0.0, 100.0, 115.0, 130.0, 145.0, 185.0, 190.0, 400.0, 500.0]
    ds = run(signals, 2, times, cfg, scale_down_stabilization_s=0.0)
    by_t = dict(zip(times, ds, strict=True))
    assert by_t[100.0].to_replicas == 10  # past the step limit (2 + 4) and the cooldown: at once
    assert by_t[100.0].rule == Rule.Panic
    assert by_t[100.0].reason == "panic: short-window 70/s needs 10 >= 2 x 2; 2 -> 10"
    assert by_t[130.0].to_replicas == 10 and by_t[130.0].rule == Rule.Panic  # burst over, still in panic
    assert "in panic, not scaling down" in by_t[145.0].reason
    # last trigger at 115 s; panic ends at 175 s: the next cycle may scale down again
    assert [by_t[t].to_replicas for t in (185.0, 190.0, 400.0, 500.0)] == [5, 5, 3, 2]  # halving, cooldowns
    assert by_t[500.0].reason == "arrivals 14/s x 100 ms / 70% busy; 3 -> 2"  # 14/s x 0.1 s / 0.7 = 2


def test_panic_state_clears_after_the_stable_window() -> None:
    burst = part(2, Signals(arrival_rps=5.0, arrival_rps_short=70.0, service_time_s=0.1, queue_lag=0.0))
    calm = part(10, Signals(arrival_rps=5.0, arrival_rps_short=1.0, service_time_s=0.1, queue_lag=0.0))
    s1 = decide(WorkflowSnapshot("ns", "wf", 0.0, 1.0, (burst,)), {}).state
    assert s1["step/a"].panic_triggered_at == 0.0
    s2 = decide(WorkflowSnapshot("ns", "wf", 59.0, 1.0, (calm,)), s1).state
    assert s2["step/a"].panic_triggered_at == 0.0
    s3 = decide(WorkflowSnapshot("ns", "wf", 60.0, 1.0, (calm,)), s2).state
    assert s3["step/a"].panic_triggered_at is None


def test_scale_to_zero_after_the_idle_window_and_wake_on_work() -> None:
    def signals(t: float) -> Signals:
        lag = 5.0 if t == 450.0 else 0.0
        return Signals(arrival_rps=0.0, service_time_s=0.1, queue_lag=lag)

    times = [0.0, 100.0, 200.0, 299.0, 300.0, 400.0, 450.0]
    ds = run(signals, 1, times, bounds=Bounds(0, 10))
    counts = [d.to_replicas for d in ds]
    assert counts == [1, 1, 1, 1, 0, 0, 1]
    assert ds[3].reason == "idle 299 s of 300 s before zero; stays 1"
    assert ds[4].rule == Rule.Idle and ds[4].reason == "idle 300 s >= 300 s (no arrivals, no lag); 1 -> 0"
    assert ds[5].reason == "no arrivals, no lag; stays 0"
    # lag at zero replicas: back to one within the same cycle
    assert ds[6].reason == "queue lag 5 > 20/replica x 0; 0 -> 1"


def test_wake_ignores_the_cooldown_and_unknown_signals_never_wake_or_sleep() -> None:
    just_changed = PartState(history=((0.0, 0),), last_change_at=99.0)
    woken = decide(
        WorkflowSnapshot("ns", "wf", 100.0, 1.0, (part(0, Signals(arrival_rps=0.5), bounds=Bounds(0, 5)),)),
        {"step/a": just_changed},
    ).decisions[0]
    assert (woken.from_replicas, woken.to_replicas, woken.rule) == (0, 1, Rule.Wake)
    # all unknown at zero: stays at zero (nothing says there is work); at one: never goes to zero
    for replicas in (0, 1):
        ds = run(lambda t: Signals(), replicas, [0.0, 400.0, 800.0], bounds=Bounds(0, 5))
        assert [d.to_replicas for d in ds] == [replicas] * 3
        assert all(d.rule == Rule.FailStatic for d in ds)


def test_idle_must_be_seen_continuously() -> None:
    def signals(t: float) -> Signals:  # the rate is unknown for one cycle: the idle clock restarts at 300 s
        return Signals(arrival_rps=None if t == 200.0 else 0.0, service_time_s=0.1, queue_lag=0.0)

    ds = run(signals, 1, [0.0, 100.0, 200.0, 300.0, 500.0, 599.0, 600.0], bounds=Bounds(0, 5))
    assert [d.to_replicas for d in ds] == [1, 1, 1, 1, 1, 1, 0]


# -- forecast and feed-forward ---------------------------------------------------------------------------


def test_holt_follows_a_linear_ramp_exactly() -> None:
    state = None
    for t in range(0, 300, 15):  # 10 req/s rising by 2 req/s every second
        state = holt_update(state, 10.0 + 2.0 * t, float(t), alpha=0.5, beta=0.3)
    assert state is not None
    assert state.trend == pytest.approx(2.0)
    assert holt_forecast(state, 20.0) == pytest.approx(10.0 + 2.0 * (285 + 20))


def test_holt_converges_on_a_ramp_after_a_step_and_never_forecasts_below_zero() -> None:
    state = holt_update(None, 100.0, 0.0, 0.5, 0.3)
    state = holt_update(state, 100.0, 10.0, 0.5, 0.3)  # flat start: trend 0
    for t in range(20, 600, 10):  # then a ramp of 1 req/s per second
        state = holt_update(state, 100.0 + (t - 10), float(t), 0.5, 0.3)
    assert state.trend == pytest.approx(1.0, abs=1e-3)
    falling = holt_update(holt_update(None, 10.0, 0.0, 0.5, 0.3), 0.0, 10.0, 0.5, 0.3)
    assert holt_forecast(falling, 60.0) == 0.0
    assert holt_update(falling, 5.0, 10.0, 0.5, 0.3) is falling  # no time passed: nothing learnt


def _diamond(a_rate: float, fan_out: float = 1.0, c_rate: float = 0.0) -> WorkflowSnapshot:
    """a fans out to b and c; d joins them; b calls model m."""

    def s(name: str, rate: float, nxt: tuple[str, ...] = (), **kw: Any) -> Part:
        sig = Signals(arrival_rps=rate, service_time_s=0.1, queue_lag=0.0, fan_out=kw.pop("fan_out", None))
        return part(2, sig, name=name, next=nxt, scale_down_stabilization_s=0.0, **kw)

    m = part(
        1, Signals(arrival_rps=1.0, queue_time_s=0.0, service_time_s=0.01), kind=PartKind.model, name="m"
    )
    return WorkflowSnapshot(
        "ns",
        "wf",
        0.0,
        1.0,
        (
            s("a", a_rate, ("b", "c"), fan_out=fan_out),
            s("b", 1.0, ("d",), model="m"),
            s("c", c_rate, ("d",)),
            s("d", 1.0),
            m,
        ),
    )


def test_feed_forward_fans_out_and_joins_take_the_max() -> None:
    rates, _ = planned_rates(_diamond(30.0, fan_out=2.0, c_rate=80.0), {}, PolicyConfig())
    assert rates["step/b"].rate == 60.0 and rates["step/b"].source == "from a x 2"
    assert rates["step/c"].rate == 80.0 and rates["step/c"].source == "measured"  # its own is higher
    assert rates["step/d"].rate == 80.0 and rates["step/d"].source == "from c"  # join: max of 60 and 80
    assert rates["model/m"].rate == 60.0  # the steps calling it


def test_a_snapshot_computes_its_topology_once_and_a_replaced_one_anew() -> None:
    snap = _diamond(30.0)
    assert snap.step_order() == ("a", "b", "c", "d")
    assert dict(snap.step_inputs) == {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    assert snap.step_order() is snap.step_order() and snap.steps is snap.steps  # computed once
    with pytest.raises(TypeError):
        snap.step_inputs["d"] = ()  # shared by every reader: read-only
    # dataclasses.replace builds a new snapshot, which reads its own parts, never the old one's cache
    rewired = replace(snap, parts=tuple(replace(p, next=("d",)) if p.name == "a" else p for p in snap.parts))
    assert rewired.step_order() == ("a", "b", "c", "d")
    assert dict(rewired.step_inputs) == {"a": (), "b": (), "c": (), "d": ("a", "b", "c")}
    trimmed = replace(snap, parts=snap.parts[3:])  # d and m
    assert [p.name for p in trimmed.steps] == ["d"] and [p.name for p in trimmed.models] == ["m"]
    with pytest.raises(ValueError, match="form a cycle"):
        replace(snap, parts=tuple(replace(p, next=("a",)) if p.name == "d" else p for p in snap.parts))


def test_downstream_steps_scale_before_their_queues_build() -> None:
    # a's arrivals jump to 20/s; b, c and d still see 1/s and empty queues, but are sized for 20/s
    out = decide(_diamond(20.0), {}, PolicyConfig(target_utilization=0.7))
    by = {d.target: d for d in out.decisions}
    for name in "bcd":
        assert by[f"step/{name}"].to_replicas == 3  # 20/s x 0.1 s / 0.7 = 2.9
    assert by["step/d"].reason == "arrivals 20/s (from b) x 100 ms / 70% busy; 2 -> 3"


def test_the_forecast_sizes_for_the_rate_one_cold_start_ahead() -> None:
    cfg = PolicyConfig()
    state: dict[str, PartState] = {}
    d = None
    for t in (0.0, 15.0, 30.0):  # 10, 40, 70 req/s: rising 2 req/s per second
        p = part(2, Signals(arrival_rps=10.0 + 2.0 * t, service_time_s=0.1, queue_lag=0.0), cold_start_s=30.0)
        cfg = PolicyConfig(max_up_pods=100, target_utilization=0.7)
        res = decide(WorkflowSnapshot("ns", "wf", t, 1.0, (p,)), state, cfg)
        state, (d,) = res.state, res.decisions
    assert d is not None
    # 30 s ahead: 70 + 60 = 130 req/s x 0.1 s / 0.7 = 18.6 -> 19
    assert d.to_replicas == 19 and "(forecast +30s)" in d.reason
    assert cfg.forecast_horizon_max_s >= 30.0


# -- properties -------------------------------------------------------------------------------------------

maybe_rate = st.one_of(st.none(), st.floats(0, 5000))
signals = st.builds(
    Signals,
    arrival_rps=maybe_rate,
    arrival_rps_short=maybe_rate,
    service_time_s=st.one_of(st.none(), st.floats(1e-4, 2.0)),
    queue_lag=st.one_of(st.none(), st.floats(0, 1e6)),
    p95_latency_s=st.one_of(st.none(), st.floats(1e-3, 60.0)),
    queue_time_s=st.one_of(st.none(), st.floats(0, 10.0)),
)


@st.composite
def cycles(draw: st.DrawFn) -> tuple[Part, PartState, float]:
    lo = draw(st.integers(0, 20))
    hi = draw(st.integers(max(lo, 1), 60))
    p = part(
        draw(st.integers(0, 80)),
        draw(signals),
        kind=draw(st.sampled_from(PartKind)),
        mode=draw(st.sampled_from([QUEUE, SLO])),
        bounds=Bounds(lo, hi),
        scale_down_stabilization_s=draw(st.sampled_from([0.0, 120.0])),
    )
    history = tuple(
        (float(t), r) for t, r in draw(st.lists(st.tuples(st.integers(0, 999), st.integers(0, 80))))
    )
    state = PartState(
        history=tuple(sorted(history)),
        last_change_at=draw(st.one_of(st.none(), st.floats(0, 1000))),
        panic_triggered_at=draw(st.one_of(st.none(), st.floats(0, 1000))),
        idle_since=draw(st.one_of(st.none(), st.floats(0, 1000))),
    )
    return p, state, draw(st.floats(0.1, 5.0))


@settings(max_examples=300, deadline=None)
@given(cycles())
def test_any_input_gives_a_decision_within_bounds(case: tuple[Part, PartState, float]) -> None:
    p, state, slo_s = case
    (d,) = decide(WorkflowSnapshot("ns", "wf", 1000.0, slo_s, (p,)), {p.key: state}).decisions
    assert p.bounds.lo <= d.to_replicas <= p.bounds.hi
    assert d.reason and "\n" not in d.reason


@settings(max_examples=300, deadline=None)
@given(cycles())
def test_missing_signals_never_scale_down(case: tuple[Part, PartState, float]) -> None:
    p, state, slo_s = case
    (d,) = decide(WorkflowSnapshot("ns", "wf", 1000.0, slo_s, (p,)), {p.key: state}).decisions
    # An idle part reports no service time (nothing was served: 0/0), yet its lag and rate say "no work":
    # going to zero after the idle window is the one scale-down a missing signal does not stop.
    if d.missing and d.rule != Rule.Idle:
        assert d.to_replicas >= min(p.replicas, p.bounds.hi)  # only the spec's own bound lowers it
