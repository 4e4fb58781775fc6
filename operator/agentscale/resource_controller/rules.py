"""The sizing rules of modes queue and slo: how many replicas a part needs now, before any damping.

Each returns a :class:`Recommendation`: a replica count, the rule that set it, a reason, and the signals that
were missing. ``hold`` means the mode's primary signal is missing (hold the current count); signals listed in
``missing`` without ``hold`` allow a scale-up, never a scale-down (the caller enforces both: fail static).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from agentscale.api.models import ScalingMode
from agentscale.resource_controller import queueing as Q
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.forecast import PlannedRate
from agentscale.resource_controller.snapshot import Part, PartKind, Rule, ms, num


class Recommendation(NamedTuple):
    """A rule's answer (a named tuple: a fleet's cycle builds thousands, and a tuple is the cheapest frozen
    value to build)."""

    replicas: int
    rule: Rule
    reason: str
    missing: tuple[str, ...] = ()
    hold: bool = False
    steady: int | None = None
    """When a backlog raised the count: the replicas the rate alone needs (what the scale-down stabilization
    window remembers, so a drain's peak is not held for a window after the backlog is gone); else None."""


def _hold(part: Part, missing: list[str]) -> Recommendation:
    return Recommendation(
        part.replicas, Rule.FailStatic, f"{', '.join(missing)} unknown; holding", tuple(missing), True
    )


def _cmp(x: float, y: float) -> str:
    return ">" if x > y else "<="


def drain_window_s(part: Part, budget_s: float, cfg: PolicyConfig) -> float:
    """Seconds to drain a backlog over: the latency budget, or ``drain_startup_share`` x the part's start-up
    delay when that is longer (pods ordered now serve only after the start-up; sizing the drain to the budget
    alone asks for every replica allowed and holds them long after the backlog is gone)."""
    return max(budget_s, cfg.drain_startup_share * part.cold_start_s)


def backlog_ahead(part: Part, rate: float, service_s: float) -> float:
    """A step's lag when replicas ordered now are ready: today's, plus what arrives over the start-up delay
    beyond what its current replicas serve (at the higher of the planned and the short-window rate). Only
    when there is a lag (a rate above capacity without one is the rate's to size)."""
    lag = part.signals.queue_lag or 0.0
    if lag <= 0 or part.kind != PartKind.step:
        return max(lag, 0.0)
    arriving = max(rate, part.signals.arrival_rps_short or 0.0)
    return lag + max(0.0, arriving - part.replicas / service_s) * part.cold_start_s


def _drained(lag: float, ahead: float, within_s: float) -> str:
    if lag <= 0:
        return ""
    once = f" ({num(ahead)} once ready)" if ahead > lag else ""
    return f" + lag {num(lag)}{once} drained in {ms(within_s)}"


def _steady(n: int, without_backlog: int | None) -> int | None:
    """``without_backlog`` when the backlog raised ``n`` above it, else None."""
    return without_backlog if without_backlog is not None and without_backlog < n else None


def _rate_term(
    part: Part, rate: PlannedRate, service_s: float | None, backlog: float, within_s: float, cfg: PolicyConfig
) -> Recommendation | None:
    """Little's law on the planned rate, plus the rate that drains ``backlog`` within ``within_s``."""
    if rate.rate is None or service_s is None:
        return None
    ahead = backlog_ahead(part, rate.rate, service_s) if backlog > 0 else 0.0
    total = rate.rate + Q.drain_rate(ahead, within_s)
    n = Q.little_replicas(total, service_s, cfg.target_utilization)
    why = f"{rate.describe()} x {ms(service_s)} / {cfg.target_utilization:.0%} busy"
    why += _drained(backlog, ahead, within_s)
    steady = Q.little_replicas(rate.rate, service_s, cfg.target_utilization) if ahead > 0 else n
    return Recommendation(n, Rule.ArrivalRate, why, steady=_steady(n, steady))


def _missing_rate_inputs(part: Part, service_s: float | None) -> list[str]:
    missing = []
    if part.signals.arrival_rps is None:
        missing.append("arrival rate")
    if service_s is None:
        missing.append("service time")
    return missing


def queue_step(part: Part, rate: PlannedRate, budget_s: float, cfg: PolicyConfig) -> Recommendation:
    """Mode queue, steps: the larger of lag / targetQueueLagPerReplica (the backlog each replica may hold)
    and Little's law on the arrival rate plus draining the lag within the drain window."""
    lag = part.signals.queue_lag
    if lag is None:
        return _hold(part, ["queue lag"])
    target = part.target_queue_lag_per_replica
    by_lag = Recommendation(
        Q.ceil(lag / target),
        Rule.QueueLag,
        f"queue lag {num(lag)} {_cmp(lag, target * part.replicas)} {num(target)}/replica x {part.replicas}",
    )
    service_s = part.service_time_s()
    by_rate = _rate_term(part, rate, service_s, lag, drain_window_s(part, budget_s, cfg), cfg)
    missing = tuple(_missing_rate_inputs(part, service_s))
    if missing == ("service time",) and rate.rate is not None and rate.rate <= 0 and lag <= 0:
        # Nothing arrives and nothing waits: Little's law needs no replica whatever a message takes, and an
        # idle step has no service time to measure (0/0), so its absence is no reason to hold. (Seen on real
        # pods, test_closed_loop.py: once the rate window held no completions, an idle step kept the
        # replicas of its last burst for good.)
        by_rate = Recommendation(0, Rule.ArrivalRate, f"{rate.describe()}, no lag")
        missing = ()
    best = by_lag if by_rate is None or by_lag.replicas >= by_rate.replicas else by_rate
    steady = None
    if by_rate is not None:  # the backlog's share of either rule: the rate alone needs by_rate's steady
        steady = _steady(best.replicas, by_rate.replicas if by_rate.steady is None else by_rate.steady)
    return Recommendation(best.replicas, best.rule, best.reason, missing, steady=steady)


def queue_model(part: Part, rate: PlannedRate, cfg: PolicyConfig) -> Recommendation:
    """Mode queue, model servers: the larger of current x queue time / targetQueueTimeMs (Triton's own
    queue time per request) and Little's law on the arrival rate with the measured service time."""
    qt = part.signals.queue_time_s
    if qt is None:
        return _hold(part, ["queue time"])
    target = part.target_queue_time_s
    by_time = Recommendation(
        Q.ceil(max(part.replicas, 1) * qt / target) if qt > 0 else 0,
        Rule.QueueTime,
        f"queue time {ms(qt)} {_cmp(qt, target)} {ms(target)} target x {part.replicas}",
    )
    service_s = part.service_time_s()
    by_rate = _rate_term(part, rate, service_s, 0.0, 0.0, cfg)
    best = by_time if by_rate is None or by_time.replicas >= by_rate.replicas else by_rate
    missing = tuple(_missing_rate_inputs(part, service_s))
    return Recommendation(best.replicas, best.rule, best.reason, missing)


def correction(part: Part, service_s: float, cfg: PolicyConfig) -> float:
    """Observed p95 / the model's p95 of the same quantity, clamped to [correction_min, correction_max]; 1
    when either is unknown. A step's p95 signal is its workers' read-to-ack time, service only: the model's
    side is the p95 of one exponential service time of a message (``-ln(1 - q) x service x slots``), so a
    service tail lighter than the exponential the model assumes (ratio < 1) says it overestimates waiting
    too. A model server's p95 is the client's request time (Triton's queue + compute): the model's side is
    M/M/c's time in system at the current replicas and measured rate."""
    observed = part.signals.p95_latency_s
    if observed is None or observed <= 0:
        return 1.0
    if part.kind == PartKind.step:
        predicted = Q.service_quantile(service_s * part.slots, cfg.latency_quantile)
    else:
        lam = part.signals.arrival_rps
        if lam is None or part.replicas < 1:
            return 1.0
        predicted = Q.mmc_quantile(part.replicas, lam, service_s, cfg.latency_quantile)
        if not 0 < predicted < float("inf"):
            return 1.0
    return min(max(observed / predicted, cfg.correction_min), cfg.correction_max)


def _size_slo(
    part: Part, service_s: float, budget_s: float, k: float, floor_s: float, cfg: PolicyConfig
) -> Callable[[float], int | None]:
    """Replicas for a rate, or None when the bounds cannot meet the budget. Steps: the budget less the
    corrected service p95 ``floor_s`` (``k`` x the exponential's) is what waiting may take, at M/M/c's
    waiting tail scaled by :func:`~agentscale.resource_controller.queueing.waiting_scale` (M/G/c). Models
    (whose p95 holds Triton's queue): M/M/c's time in system within ``budget / k``."""
    lo, hi, q = part.bounds.lo, part.bounds.hi, cfg.latency_quantile
    if part.kind == PartKind.step:
        wait_s = budget_s - floor_s
        scale = Q.waiting_scale(k, q)
        return lambda lam: Q.replicas_for_waiting(lam, service_s, wait_s / scale, lo, hi, q)
    return lambda lam: Q.replicas_for_quantile(lam, service_s, budget_s / k, lo, hi, q)


def _below_service(
    part: Part,
    rate: PlannedRate,
    service_s: float,
    budget_s: float,
    floor_s: float,
    lag: float,
    window: float,
    missing: list[str],
    cfg: PolicyConfig,
) -> Recommendation:
    """The part's budget is below its own (corrected) service p95, what it takes with no waiting at all:
    replicas shorten waiting, never service, so no count meets it. Going to ``maxReplicas`` would only burn
    capacity (GPUs, for a model server); size it as mode queue does (Little's law at ``target_utilization``,
    plus the drain) and say what would meet the target instead."""
    assert rate.rate is not None
    term = _rate_term(part, rate, service_s, lag, window, cfg)
    assert term is not None
    why = (
        f"p95 budget {ms(budget_s)} below the service's own p95 {ms(floor_s)}, which replicas cannot "
        f"shorten (faster service or a larger share of the target can): {term.reason} needs {term.replicas}"
    )
    return Recommendation(term.replicas, Rule.BudgetBelowService, why, tuple(missing), steady=term.steady)


def slo(part: Part, rate: PlannedRate, budget_s: float, cfg: PolicyConfig) -> Recommendation:
    """Mode slo: the fewest replicas that meet the part's latency budget on the planned rate (plus draining
    the lag within the drain window, for steps), by M/M/c on the measured service time with the online
    correction (:func:`correction`) applied to what the p95 signal measures: a step's service part, a model
    server's whole time in system (a model that under-predicts by 1.5x must aim 1.5x lower)."""
    service_s = part.service_time_s()
    missing = _missing_rate_inputs(part, service_s)
    if rate.rate is None or service_s is None:
        return _hold(part, missing or ["arrival rate"])
    if part.signals.p95_latency_s is None:
        missing.append("p95 latency")
    is_step = part.kind == PartKind.step
    lag = part.signals.queue_lag if is_step else 0.0
    if lag is None:
        missing.append("queue lag")
        lag = 0.0
    k = correction(part, service_s, cfg)
    window = drain_window_s(part, budget_s, cfg)
    floor_s = k * Q.service_quantile(service_s * (part.slots if is_step else 1), cfg.latency_quantile)
    if floor_s >= budget_s:
        return _below_service(part, rate, service_s, budget_s, floor_s, lag, window, missing, cfg)
    size = _size_slo(part, service_s, budget_s, k, floor_s, cfg)
    ahead = backlog_ahead(part, rate.rate, service_s)
    need = size(rate.rate + Q.drain_rate(ahead, window))
    hi = part.bounds.hi
    steady = None
    if lag > 0:
        alone = size(rate.rate)
        steady = _steady(hi if need is None else need, hi if alone is None else alone)
    what = f"{rate.describe()}{_drained(lag, ahead, window)}, service {ms(service_s)}"
    fix = f", observed/model x{num(k)}" if k != 1.0 else ""
    if need is None:
        why = f"p95 budget {ms(budget_s)} unmeetable within {hi} replicas ({what}{fix})"
        return Recommendation(hi, Rule.BudgetUnmeetable, why, tuple(missing), steady=steady)
    why = f"p95 budget {ms(budget_s)} ({what}{fix}) needs {need}"
    return Recommendation(need, Rule.LatencyBudget, why, tuple(missing), steady=steady)


def recommend(part: Part, rate: PlannedRate, budget_s: float, cfg: PolicyConfig) -> Recommendation:
    """The rule of the part's mode (queue: lag or queue time; slo: latency budget)."""
    if part.mode == ScalingMode.slo:
        return slo(part, rate, budget_s, cfg)
    if part.kind == PartKind.model:
        return queue_model(part, rate, cfg)
    return queue_step(part, rate, budget_s, cfg)
