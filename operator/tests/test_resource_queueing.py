"""The resource controller's queueing math and budget split, against numbers checked by hand."""

from __future__ import annotations

import math

import pytest
from agentscale.api.models import Scaling, ScalingMode
from agentscale.resource_controller import queueing as Q
from agentscale.resource_controller.budgets import budgets, heaviest_paths, step_weights
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.snapshot import (
    BatchProfile,
    Bounds,
    Part,
    PartKind,
    Signals,
    WorkflowSnapshot,
)

LN20 = math.log(20.0)  # p95 of an exponential with rate 1


@pytest.mark.parametrize(
    ("c", "a", "expected"),
    [
        (2, 1.0, 1 / 3),  # textbook: two servers, lambda = mu = 1
        (1, 0.5, 0.5),  # M/M/1: P(wait) = rho
        (1, 0.9, 0.9),
        (3, 2.0, 4 / 9),  # a^3/3! x 3/(3-2) / (1 + 2 + 2 + 4) = 4/9
        (2, 2.0, 1.0),  # unstable: everyone waits
        (4, 0.0, 0.0),
    ],
)
def test_erlang_c_textbook_values(c: int, a: float, expected: float) -> None:
    assert Q.erlang_c(c, a) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("c", "lam", "service_s", "expected"),
    [
        (1, 1.0, 0.5, LN20 / (2.0 - 1.0)),  # M/M/1: time in system ~ Exp(mu - lam)
        (1, 9.0, 0.1, LN20 / (10.0 - 9.0)),
        (1, 0.0, 1.0, LN20),  # no queue: the service time's own p95
        # M/M/2, lam = mu = 1: theta = 2 mu - lam = mu, so P(T > t) = e^-t (1 + t/3); = 0.05 at t = 3.8165
        (2, 1.0, 1.0, 3.816460305),
        (1, 2.0, 0.5, math.inf),  # lam = c mu: no steady state
    ],
)
def test_mmc_p95_time_in_system(c: int, lam: float, service_s: float, expected: float) -> None:
    got = Q.mmc_quantile(c, lam, service_s, 0.95)
    assert got == pytest.approx(expected, rel=1e-7)
    if math.isfinite(got):  # the tail at the quantile is 5%
        mu = 1 / service_s
        assert Q.sojourn_tail(got, c, lam, mu, Q.erlang_c(c, lam / mu)) == pytest.approx(0.05, rel=1e-6)


@pytest.mark.parametrize(
    ("lam", "service_s", "target_s", "lo", "hi", "expected"),
    [
        (1.0, 1.0, 4.0, 1, 10, 2),  # c=1 unstable, c=2 gives 3.82 s
        (1.0, 1.0, 3.8, 1, 10, 3),  # 3.82 > 3.8: one more
        (1.0, 1.0, 4.0, 5, 10, 5),  # the lower bound
        (1.0, 1.0, 2.9, 1, 100, None),  # below the service time's own p95 (ln 20 = 2.996 s): never met
        (30.0, 0.1, 1.0, 1, 3, None),  # needs more than the upper bound
        (0.0, 0.1, 1.0, 0, 10, 1),  # nothing arrives: at least one (zero is the idle rule's call)
    ],
)
def test_replicas_for_p95(
    lam: float, service_s: float, target_s: float, lo: int, hi: int, expected: int | None
) -> None:
    assert Q.replicas_for_quantile(lam, service_s, target_s, lo, hi, 0.95) == expected


def test_replicas_for_p95_is_the_fewest_that_meets_the_target() -> None:
    lam, service_s, target = 40.0, 0.1, 0.35
    c = Q.replicas_for_quantile(lam, service_s, target, 1, 100)
    assert c is not None
    assert Q.mmc_quantile(c, lam, service_s) <= target < Q.mmc_quantile(c - 1, lam, service_s)


@pytest.mark.parametrize(
    ("rate", "service_s", "util", "expected"),
    [
        (70.0, 0.05, 0.7, 5),
        (10.0, 0.1, 0.7, 2),
        (0.0, 0.1, 0.7, 0),
        (100.0, 0.01, 1.0, 1),
        (101.0, 0.01, 1.0, 2),
    ],
)
def test_little_law_replicas(rate: float, service_s: float, util: float, expected: int) -> None:
    assert Q.little_replicas(rate, service_s, util) == expected


def test_drain_rate() -> None:
    assert Q.drain_rate(340, 10.0) == 34.0
    assert Q.drain_rate(0, 0.0) == 0.0


def test_batch_profile_from_the_measured_encoder_large_line() -> None:
    # bench/dataplane/results/profile.json: encoder-large 6.426 ms + 0.27034 ms per sample, max batch 64
    p = BatchProfile.from_ms(6.426, 0.27034, 64)
    assert p.per_request_s(1) == pytest.approx(6.69634e-3)
    assert p.per_request_s(64) == pytest.approx((6.426 + 0.27034 * 64) / 64 / 1000)
    assert p.per_request_s(1000) == p.per_request_s(64)  # clamped to the largest batch
    part = Part(PartKind.model, "m", ScalingMode.queue, 1, Bounds(1, 4), Signals(mean_batch=64), profile=p)
    assert part.service_time_s() == p.per_request_s(64)
    measured = Part(PartKind.model, "m", ScalingMode.queue, 1, Bounds(1, 4), Signals(service_time_s=0.002))
    assert measured.service_time_s() == 0.002


def test_bounds_follow_the_apis_one_rule() -> None:
    assert Bounds.of(Scaling(mode=ScalingMode.queue, minReplicas=0, maxReplicas=7)) == Bounds(0, 7)
    assert Bounds.of(Scaling(mode=ScalingMode.fixed, replicas=3)) == Bounds(3, 3)
    part = Part.of(PartKind.step, "a", Scaling(mode=ScalingMode.slo, targetQueueTimeMs=40), replicas=2)
    assert part.controlled and part.target_queue_time_s == 0.04
    assert not Part.of(PartKind.step, "a", Scaling(mode=ScalingMode.hpa), replicas=2).controlled
    for mode in ScalingMode:  # the policy asks the API's ownership rule once per mode, so it must agree
        scaling = Scaling(mode=mode, minReplicas=0, maxReplicas=3, replicas=1)
        owns = Part.of(PartKind.model, "m", scaling, replicas=1).controlled
        assert owns == scaling.controller_owns_replicas(), mode


# -- budgets -----------------------------------------------------------------------------------------------


def _step(name: str, p95: float | None, nxt: tuple[str, ...] = (), model: str | None = None) -> Part:
    return Part(
        PartKind.step,
        name,
        ScalingMode.slo,
        1,
        Bounds(1, 10),
        Signals(p95_latency_s=p95),
        next=nxt,
        model=model,
    )


def _diamond(b_p95: float = 0.3, model_p95: float | None = None) -> WorkflowSnapshot:
    """a fans out to b and c; d joins them. b calls model m."""
    return WorkflowSnapshot(
        "ns",
        "wf",
        0.0,
        1.0,
        (
            _step("a", 0.1, ("b", "c")),
            _step("b", b_p95, ("d",), model="m"),
            _step("c", 0.1, ("d",)),
            _step("d", 0.1),
            Part(PartKind.model, "m", ScalingMode.slo, 1, Bounds(1, 4), Signals(p95_latency_s=model_p95)),
        ),
    )


def test_budget_split_on_a_diamond() -> None:
    # critical path a-b-d weighs 0.5 s: a 0.2, b 0.6, d 0.2 of the 1 s target; c's path a-c-d weighs 0.3 s
    got = budgets(_diamond(), PolicyConfig())
    assert got["step/a"] == pytest.approx(0.2)
    assert got["step/b"] == pytest.approx(0.6)
    assert got["step/c"] == pytest.approx(1 / 3)
    assert got["step/d"] == pytest.approx(0.2)
    assert got["step/a"] + got["step/b"] + got["step/d"] == pytest.approx(1.0)  # the critical path: all of it
    assert got["step/a"] + got["step/c"] + got["step/d"] <= 1.0  # every other path: within it
    # the model: b's budget x the default share (m's latency unmeasured)
    assert got["model/m"] == pytest.approx(0.3)


def test_budgets_rebalance_as_measurements_move() -> None:
    got = budgets(_diamond(b_p95=0.1, model_p95=0.02), PolicyConfig())
    for s in "abcd":  # every step now weighs the same; each path has three steps
        assert got[f"step/{s}"] == pytest.approx(1 / 3)
    assert got["model/m"] == pytest.approx(1 / 3 * 0.2)  # m takes 20% of b's measured latency


def test_budget_weights_fill_in_unmeasured_steps_and_floor_tiny_ones() -> None:
    snap = WorkflowSnapshot(
        "ns", "wf", 0.0, 1.0, (_step("a", 0.4, ("b",)), _step("b", None, ("c",)), _step("c", 0.001))
    )
    w = step_weights(snap, PolicyConfig(budget_weight_floor=0.05))
    assert w == {"a": 0.4, "b": pytest.approx(0.2005), "c": pytest.approx(0.02)}
    assert heaviest_paths(snap, w)["c"] == pytest.approx(0.6205)


def test_cycles_and_unknown_steps_are_refused_with_names() -> None:
    with pytest.raises(ValueError, match=r"\['a', 'b'\] form a cycle"):
        WorkflowSnapshot("ns", "wf", 0.0, 1.0, (_step("a", 0.1, ("b",)), _step("b", 0.1, ("a",))))
    with pytest.raises(ValueError, match="unknown steps"):
        WorkflowSnapshot("ns", "wf", 0.0, 1.0, (_step("a", 0.1, ("zz",)),))
