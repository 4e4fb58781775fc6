"""The resource controller's sizing rules and damping, table-driven, with numbers checked by hand.

Defaults (PolicyConfig): 85% target utilization (the sizing table pins 70%, its numbers worked by hand),
10% tolerance, cooldowns 15 s up / 60 s down, at most max(4, +100%) up and max(1, -50%) down per cycle.
"""

from __future__ import annotations

from typing import Any

import pytest
from agentscale.api.models import ScalingMode
from agentscale.resource_controller import queueing as Q
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.decide import decide
from agentscale.resource_controller.forecast import PlannedRate
from agentscale.resource_controller.rules import recommend
from agentscale.resource_controller.snapshot import (
    BatchProfile,
    Bounds,
    Decision,
    Direction,
    Part,
    PartKind,
    Rule,
    Signals,
    WorkflowSnapshot,
)
from agentscale.resource_controller.state import PartState

QUEUE, SLO = ScalingMode.queue, ScalingMode.slo
WIDE = PolicyConfig(max_up_pods=1000, target_utilization=0.7)  # sizing tests: no step limit in the way


def step(replicas: int = 1, mode: ScalingMode = QUEUE, lo: int = 1, hi: int = 50, **kw: Any) -> Part:
    fields = {k: kw.pop(k) for k in list(kw) if k in Signals.__dataclass_fields__}
    return Part(PartKind.step, kw.pop("name", "a"), mode, replicas, Bounds(lo, hi), Signals(**fields), **kw)


def model(replicas: int = 1, mode: ScalingMode = QUEUE, lo: int = 1, hi: int = 50, **kw: Any) -> Part:
    fields = {k: kw.pop(k) for k in list(kw) if k in Signals.__dataclass_fields__}
    return Part(PartKind.model, kw.pop("name", "m"), mode, replicas, Bounds(lo, hi), Signals(**fields), **kw)


def measured(p: Part) -> PlannedRate:
    return PlannedRate(p.signals.arrival_rps, "measured")


# -- sizing rules ------------------------------------------------------------------------------------------

ENCODER_LARGE = BatchProfile.from_ms(6.426, 0.27034, 64)  # bench/dataplane/results/profile.json

RULES = [
    # (part, budget_s, replicas, rule, reason fragment)
    (
        step(6, queue_lag=340, target_queue_lag_per_replica=20),
        10.0,
        17,
        Rule.QueueLag,
        "queue lag 340 > 20/replica x 6",
    ),
    # lag term 17; rate term (10 + 340/10) x 0.1 / 0.7 = 6.3 -> 7: the lag wins
    (step(6, queue_lag=340, arrival_rps=10, service_time_s=0.1), 10.0, 17, Rule.QueueLag, "340 > 20/replica"),
    # lag term 5; rate term (14 + 100/2) x 0.1 / 0.7 = 9.14 -> 10
    (
        step(3, queue_lag=100, arrival_rps=14, service_time_s=0.1),
        2.0,
        10,
        Rule.ArrivalRate,
        "lag 100 drained in 2000 ms",
    ),
    # 70/s x 50 ms / 0.7 = 5 exactly
    (
        step(3, queue_lag=0, arrival_rps=70, service_time_s=0.05),
        1.0,
        5,
        Rule.ArrivalRate,
        "arrivals 70/s x 50 ms / 70% busy",
    ),
    (
        step(3, queue_lag=None, arrival_rps=70, service_time_s=0.05),
        1.0,
        3,
        Rule.FailStatic,
        "queue lag unknown; holding",
    ),
    # models: 4 x 45 / 20 = 9
    (model(4, queue_time_s=0.045), 1.0, 9, Rule.QueueTime, "queue time 45 ms > 20 ms target x 4"),
    # 4 x 5 / 20 = 1; the rate term: 7000/s x 0.3707 ms (encoder-large at batch 64) / 0.7 = 3.7 -> 4
    (
        model(4, queue_time_s=0.005, arrival_rps=7000, mean_batch=64, profile=ENCODER_LARGE),
        1.0,
        4,
        Rule.ArrivalRate,
        "x 0.3707 ms",
    ),
    (model(4, arrival_rps=7000), 1.0, 4, Rule.FailStatic, "queue time unknown"),
    # slo, models (time in system): lambda = mu = 1 on 2 replicas: p95 3.82 s meets a 4 s budget; c = 1 cannot
    # keep up (steps size waiting apart from service: test_rc_policy_tuning.py)
    (
        model(1, SLO, arrival_rps=1, service_time_s=1, p95_latency_s=None),
        4.0,
        2,
        Rule.LatencyBudget,
        "needs 2",
    ),
    (
        model(1, SLO, arrival_rps=1, service_time_s=1),
        3.8,
        3,
        Rule.LatencyBudget,
        "p95 budget 3800 ms",
    ),
    # below the service time's own p95 (ln 20 = 3.0 s): no replica count meets it and more replicas would
    # not help, so it is sized for utilization (1/s x 1 s at 70% busy: 2), not sent to maxReplicas
    (
        step(1, SLO, hi=8, queue_lag=0, arrival_rps=1, service_time_s=1),
        2.9,
        2,
        Rule.BudgetBelowService,
        "below the service's own p95 2996 ms",
    ),
    (
        model(1, SLO, hi=8, arrival_rps=3, service_time_s=1, p95_latency_s=None),
        2.9,
        5,
        Rule.BudgetBelowService,
        "which replicas cannot shorten",
    ),
    # within reach of the service alone, but not of 2 replicas at this rate: the upper bound
    (
        step(1, SLO, hi=2, queue_lag=0, arrival_rps=3, service_time_s=1),
        4.0,
        2,
        Rule.BudgetUnmeetable,
        "unmeetable within 2",
    ),
    (step(2, SLO, queue_lag=0, service_time_s=1), 4.0, 2, Rule.FailStatic, "arrival rate unknown"),
    (model(2, SLO, arrival_rps=1), 4.0, 2, Rule.FailStatic, "service time unknown"),
]


@pytest.mark.parametrize(("part", "budget", "replicas", "rule", "fragment"), RULES)
def test_sizing_rules(part: Part, budget: float, replicas: int, rule: Rule, fragment: str) -> None:
    rec = recommend(part, measured(part), budget, WIDE)
    assert (rec.replicas, rec.rule) == (replicas, rule), rec.reason
    assert fragment in rec.reason


def test_slo_is_corrected_by_observed_over_predicted_latency_clamped() -> None:
    # a model server (its p95 is time in system): at 2 replicas, lambda = mu = 1, M/M/2 predicts 3.8165 s.
    # Observed twice that: aim at budget / 2.
    base: dict[str, Any] = dict(arrival_rps=1.0, service_time_s=1.0)
    plain = recommend(model(2, SLO, **base), PlannedRate(1.0, "measured"), 6.0, WIDE)
    slow = recommend(model(2, SLO, p95_latency_s=7.633, **base), PlannedRate(1.0, "measured"), 6.0, WIDE)
    far = recommend(model(2, SLO, p95_latency_s=100.0, **base), PlannedRate(1.0, "measured"), 6.0, WIDE)
    assert plain.replicas == 2
    assert slow.replicas == Q.replicas_for_quantile(1.0, 1.0, 3.0, 1, 50) and slow.replicas > 2
    assert "observed/model x2" in slow.reason
    assert far.replicas == slow.replicas  # clamped at correction_max = 2


# -- one cycle through decide ----------------------------------------------------------------------------


def one(
    part: Part, now: float = 1000.0, state: PartState | None = None, cfg: PolicyConfig | None = None
) -> Decision:
    snap = WorkflowSnapshot("ns", "wf", now, 1.0, (part,))
    out = decide(snap, {part.key: state} if state else {}, cfg)
    assert len(out.decisions) == 1
    return out.decisions[0]


def test_the_reason_is_one_line_with_the_numbers() -> None:
    cfg = PolicyConfig(max_up_pods=3, max_up_factor=1.5)
    d = one(
        step(6, queue_lag=340, target_queue_lag_per_replica=10, arrival_rps=1, service_time_s=0.01), cfg=cfg
    )
    assert (d.to_replicas, d.rule, d.direction) == (9, Rule.MaxStep, Direction.up)
    assert d.reason == "queue lag 340 > 10/replica x 6; at most 3 more per cycle; 6 -> 9"
    assert "\n" not in d.reason


def test_only_controlled_parts_get_decisions() -> None:
    parts = (
        step(2, name="q"),
        step(2, ScalingMode.hpa, name="h"),
        step(2, ScalingMode.fixed, lo=2, hi=2, name="f"),
    )
    out = decide(WorkflowSnapshot("ns", "wf", 0.0, 1.0, parts), {})
    assert [d.target for d in out.decisions] == ["step/q"]
    assert set(out.state) == {"step/q", "step/h", "step/f"}


BUSY: dict[str, Any] = dict(queue_lag=0, arrival_rps=7, service_time_s=0.1)  # needs exactly 1 replica at 70%
SEEN = PartState(history=((0.0, 1),))  # seen long ago: no window in the way

DAMPING = [
    # (part, state, now, to, rule)
    # a fresh part cannot scale down for one stabilization window (its current count counts as recommended)
    (step(10, **BUSY), PartState(), 1000.0, 10, Rule.Stabilization),
    # window over: down, but at most max(1, 50%) per cycle
    (step(10, **BUSY), SEEN, 1000.0, 5, Rule.MaxStep),
    (step(10, scale_down_stabilization_s=0, **BUSY), PartState(), 1000.0, 5, Rule.MaxStep),
    # the window's highest recommendation (8, 100 s ago) holds the floor
    (step(10, **BUSY), PartState(history=((900.0, 8),)), 1000.0, 8, Rule.Stabilization),
    # cooldown after a change: 30 s ago < 60 s down, 10 s ago < 15 s up
    (step(10, **BUSY), PartState(history=SEEN.history, last_change_at=970.0), 1000.0, 10, Rule.Cooldown),
    (step(2, queue_lag=400), PartState(history=SEEN.history, last_change_at=990.0), 1000.0, 2, Rule.Cooldown),
    (step(2, queue_lag=400), PartState(history=SEEN.history, last_change_at=980.0), 1000.0, 6, Rule.MaxStep),
    # tolerance: 21 wanted at 20 is within 10%
    (step(20, queue_lag=420), SEEN, 1000.0, 20, Rule.Tolerance),
    (step(20, queue_lag=460), SEEN, 1000.0, 23, Rule.QueueLag),
    # bounds: the spec wins, even over fail static and stabilization
    (step(15, hi=10), PartState(), 1000.0, 10, Rule.Bounds),
    (step(0, lo=2, **BUSY), PartState(), 1000.0, 2, Rule.Bounds),
    (step(3, hi=4, queue_lag=4000), SEEN, 1000.0, 4, Rule.Bounds),
]


@pytest.mark.parametrize(("part", "state", "now", "to", "rule"), DAMPING)
def test_damping(part: Part, state: PartState, now: float, to: int, rule: Rule) -> None:
    d = one(part, now, state)
    assert (d.to_replicas, d.rule) == (to, rule), d.reason


def test_fail_static_holds_and_never_scales_down() -> None:
    nothing = one(step(5), state=SEEN)
    assert (nothing.to_replicas, nothing.rule) == (5, Rule.FailStatic)
    assert nothing.reason == "queue lag unknown; holding; stays 5"
    assert nothing.missing == ("queue lag",)
    # lag known and empty, but the arrival rate is unknown: the lag alone would say 0, so hold
    partial = one(step(5, queue_lag=0, service_time_s=0.1), state=SEEN)
    assert (partial.to_replicas, partial.rule) == (5, Rule.FailStatic)
    assert partial.reason.startswith("arrival rate unknown, not scaling down (queue lag 0")
    # ... but missing signals never stop a scale-up the known ones call for
    up = one(step(5, queue_lag=200, service_time_s=0.1), state=SEEN)
    assert (up.to_replicas, up.missing) == (10, ("arrival rate",))  # 200 / 20
    # slo with p95 unknown: sized, never down
    slo = one(step(5, SLO, queue_lag=0, arrival_rps=1, service_time_s=0.1), state=SEEN)
    assert (slo.to_replicas, slo.rule, slo.missing) == (5, Rule.FailStatic, ("p95 latency",))


def test_an_idle_queue_step_scales_down_without_a_service_time() -> None:
    # Nothing arrives and nothing waits: no replica is needed whatever a message takes, and an idle step has
    # no service time to measure (0/0). Seen on real pods (e2e/tests/test_closed_loop.py): the step kept
    # the replicas of its last burst once the rate window held no completions.
    idle = one(step(3, queue_lag=0, arrival_rps=0.0), state=SEEN)
    assert idle.to_replicas < 3 and idle.missing == (), idle.reason
    assert idle.reason.startswith("queue lag 0 <= 20/replica x 3"), idle.reason
    # arriving work with no service time measured still holds
    busy = one(step(3, queue_lag=0, arrival_rps=1.0), state=SEEN)
    assert (busy.to_replicas, busy.rule, busy.missing) == (3, Rule.FailStatic, ("service time",))
