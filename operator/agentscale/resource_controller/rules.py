"""The sizing rules of modes queue and slo: how many replicas a part needs now, before any damping.

Each returns a :class:`Recommendation`: a replica count, the rule that set it, a reason, and the signals that
were missing. ``hold`` means the mode's primary signal is missing (hold the current count); signals listed in
``missing`` without ``hold`` allow a scale-up, never a scale-down (the caller enforces both: fail static).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentscale.api.models import ScalingMode
from agentscale.resource_controller import queueing as Q
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.forecast import PlannedRate
from agentscale.resource_controller.snapshot import Part, PartKind, Rule, ms, num


@dataclass(frozen=True)
class Recommendation:
    replicas: int
    rule: Rule
    reason: str
    missing: tuple[str, ...] = ()
    hold: bool = False


def _hold(part: Part, missing: list[str]) -> Recommendation:
    return Recommendation(
        part.replicas, Rule.FailStatic, f"{', '.join(missing)} unknown; holding", tuple(missing), True
    )


def _cmp(x: float, y: float) -> str:
    return ">" if x > y else "<="


def _rate_term(
    part: Part, rate: PlannedRate, service_s: float | None, backlog: float, budget_s: float, cfg: PolicyConfig
) -> Recommendation | None:
    """Little's law on the planned rate, plus the rate that drains ``backlog`` within the budget."""
    if rate.rate is None or service_s is None:
        return None
    total = rate.rate + Q.drain_rate(backlog, budget_s)
    n = Q.little_replicas(total, service_s, cfg.target_utilization)
    why = f"{rate.describe()} x {ms(service_s)} / {cfg.target_utilization:.0%} busy"
    if backlog > 0:
        why += f" + lag {num(backlog)} drained in {ms(budget_s)}"
    return Recommendation(n, Rule.ArrivalRate, why)


def _missing_rate_inputs(part: Part, service_s: float | None) -> list[str]:
    missing = []
    if part.signals.arrival_rps is None:
        missing.append("arrival rate")
    if service_s is None:
        missing.append("service time")
    return missing


def queue_step(part: Part, rate: PlannedRate, budget_s: float, cfg: PolicyConfig) -> Recommendation:
    """Mode queue, steps: the larger of lag / targetQueueLagPerReplica (the backlog each replica may hold)
    and Little's law on the arrival rate plus draining the lag within the step's latency budget."""
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
    by_rate = _rate_term(part, rate, service_s, lag, budget_s, cfg)
    best = by_lag if by_rate is None or by_lag.replicas >= by_rate.replicas else by_rate
    missing = tuple(_missing_rate_inputs(part, service_s))
    return Recommendation(best.replicas, best.rule, best.reason, missing)


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
    """Observed p95 / M/M/c's predicted p95 at the current replicas and measured rate, clamped to
    [correction_min, correction_max]; 1 when either is unknown or the model predicts no steady state."""
    observed, lam = part.signals.p95_latency_s, part.signals.arrival_rps
    if observed is None or lam is None or observed <= 0 or part.replicas < 1:
        return 1.0
    predicted = Q.mmc_quantile(part.replicas, lam, service_s, cfg.latency_quantile)
    if not 0 < predicted < float("inf"):
        return 1.0
    return min(max(observed / predicted, cfg.correction_min), cfg.correction_max)


def slo(part: Part, rate: PlannedRate, budget_s: float, cfg: PolicyConfig) -> Recommendation:
    """Mode slo: the fewest replicas whose M/M/c p95 (waiting + service) on the planned rate (plus draining
    the lag within the budget, for steps) meets the part's latency budget, with the budget divided by the
    online correction (a model that under-predicts by 1.5x must aim 1.5x lower)."""
    service_s = part.service_time_s()
    missing = _missing_rate_inputs(part, service_s)
    if rate.rate is None or service_s is None:
        return _hold(part, missing or ["arrival rate"])
    if part.signals.p95_latency_s is None:
        missing.append("p95 latency")
    lag = part.signals.queue_lag if part.kind == PartKind.step else 0.0
    if lag is None:
        missing.append("queue lag")
        lag = 0.0
    k = correction(part, service_s, cfg)
    lam = rate.rate + Q.drain_rate(lag, budget_s)
    need = Q.replicas_for_quantile(
        lam, service_s, budget_s / k, part.bounds.lo, part.bounds.hi, cfg.latency_quantile
    )
    what = f"{rate.describe()}" + (f" + lag {num(lag)}" if lag > 0 else "") + f", service {ms(service_s)}"
    fix = f", observed/model x{num(k)}" if k != 1.0 else ""
    if need is None:
        return Recommendation(
            part.bounds.hi,
            Rule.BudgetUnmeetable,
            f"p95 budget {ms(budget_s)} unmeetable within {part.bounds.hi} replicas ({what}{fix})",
            tuple(missing),
        )
    return Recommendation(
        need, Rule.LatencyBudget, f"p95 budget {ms(budget_s)} ({what}{fix}) needs {need}", tuple(missing)
    )


def recommend(part: Part, rate: PlannedRate, budget_s: float, cfg: PolicyConfig) -> Recommendation:
    """The rule of the part's mode (queue: lag or queue time; slo: latency budget)."""
    if part.mode == ScalingMode.slo:
        return slo(part, rate, budget_s, cfg)
    if part.kind == PartKind.model:
        return queue_model(part, rate, cfg)
    return queue_step(part, rate, budget_s, cfg)
