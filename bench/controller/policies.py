"""The policies compared: this controller (modes queue and slo), an HPA on CPU, a KEDA-style queue scaler.

Each has ``name``, ``period_s`` (how often it acts) and ``decide(now, current, ready, view) -> replicas``.

- :class:`Controller` builds the workflow's snapshot with the operator's own ``loop.snapshot_of`` from an
  ``AgentWorkflow`` (so bounds, targets and the SLO come through the API's parsing), fills the step's
  ``Signals`` the way ``signals.py`` does from Prometheus (arrival rate = completions + deriv(lag) +
  deriv(pending) over 60 s and 15 s, lag from the last scrape, service time = mean read-to-ack latency, p95
  from the read-to-ack histogram), and calls ``decide`` with ``PolicyConfig()``'s defaults every
  ``LoopSettings().cycle_s`` (15 s). Nothing of the policy is copied here.
- :class:`Hpa`: the Kubernetes HPA algorithm (``replica_calculator.go`` and the default ``behavior``): CPU
  utilization averaged over ready pods; ``desired = ceil(ready x utilization / target)``; no change within
  10%; when scaling up with pods not yet ready, those count as 0% (and the result must still be a scale-up);
  scale-up at most max(+4 pods, +100%) per 15 s; scale-down to the highest recommendation of the last 300 s;
  15 s sync. CPU utilization is the pod's busy share (generous: a GPU step's CPU is less telling than that).
- :class:`Keda`: KEDA's queue scaler: an External metric (messages not yet acknowledged: waiting + in service)
  with ``AverageValue`` target, so ``desired = ceil(queueLength / target)`` (the HPA's 10% tolerance applies);
  the metric polled every 30 s (``pollingInterval``, as with ``useCachedMetrics``); scale-down through the
  HPA's default behaviour (300 s stabilization); with ``minReplicaCount: 0``, to zero after ``cooldownPeriod``
  (300 s) without messages and back to one at the next poll that sees one.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from agentscale.api.models import AgentWorkflow, ScalingMode
from agentscale.api.validation import parse_spec
from agentscale.resource_controller import PolicyConfig, Signals, decide
from agentscale.resource_controller.loop import LoopSettings, snapshot_of
from agentscale.resource_controller.state import PartState

from bench.controller.sim import Scenario, View

STEP = "serve"
KEY = f"step/{STEP}"


def workflow(mode: ScalingMode, scenario: Scenario) -> AgentWorkflow:
    """The benchmark's one-step workflow, through the API's own parsing."""
    spec = parse_spec(
        {
            "queue": {"redisUrl": "redis://redis:6379/0"},
            "slo": {"p95LatencyMs": round(scenario.slo_s * 1000)},
            "steps": [
                {
                    "name": STEP,
                    "concurrency": 1,  # one message at a time per pod, as the simulator serves them
                    "scaling": {
                        "mode": mode.value,
                        "minReplicas": scenario.min_replicas,
                        "maxReplicas": scenario.max_replicas,
                        "targetQueueLagPerReplica": scenario.target_lag_per_replica,
                        "scaleDownStabilizationSeconds": scenario.scale_down_stabilization_s,
                    },
                }
            ],
        }
    )
    return AgentWorkflow(metadata={"name": "bench", "namespace": "bench"}, spec=spec)


@dataclass
class Controller:
    mode: ScalingMode
    scenario: Scenario
    config: PolicyConfig = field(default_factory=PolicyConfig)
    period_s: int = int(LoopSettings().cycle_s)
    state: dict[str, PartState] = field(default_factory=dict)
    rules: Counter[str] = field(default_factory=Counter)
    """Rule -> cycles it set the number (changes and holds)."""
    changes: list[tuple[int, int, int, str]] = field(default_factory=list)
    """(time, from, to, reason) of every change."""

    def __post_init__(self) -> None:
        self.wf = workflow(self.mode, self.scenario)

    @property
    def name(self) -> str:
        return f"controller-{self.mode.value}"

    def signals(self, now: int, view: View) -> Signals:
        w = self.scenario.windows
        return Signals(
            arrival_rps=view.arrival_rps(now, w.stable_s),
            arrival_rps_short=view.arrival_rps(now, w.short_s),
            service_time_s=view.mean_service_s(now),
            queue_lag=view.queue_lag(),
            p95_latency_s=view.p95_service_s(now),
        )

    def decide(self, now: int, current: int, ready: int, view: View) -> int:
        # the operator is told the pods' start-up (AGENTSCALE_RC_POD_STARTUP_SECONDS): the scenario's
        snap = snapshot_of(
            self.wf, {KEY: current}, float(now), {KEY: self.signals(now, view)}, self.scenario.startup_s
        )
        outcome = decide(snap, self.state, self.config)
        self.state = dict(outcome.state)
        (d,) = outcome.decisions
        self.rules[d.rule.value] += 1
        if d.changed:
            self.changes.append((now, d.from_replicas, d.to_replicas, d.reason))
        return int(d.to_replicas)


# -- the HPA ---------------------------------------------------------------------------------------------
TOLERANCE = 0.1


def hpa_recommend(ready: int, unready: int, usage_ratio: float | None, tolerance: float = TOLERANCE) -> int:
    """``replica_calculator.go`` GetResourceReplicas for one metric. ``usage_ratio``: the metric averaged over
    the ready pods over its target (utilization / target utilization). Returns the recommendation; the
    current count (ready + unready) when the ratio is within tolerance or unknown."""
    current = ready + unready
    if usage_ratio is None or ready == 0:
        return current
    if not (unready > 0 and usage_ratio > 1.0):
        if abs(1.0 - usage_ratio) <= tolerance:
            return current
        return math.ceil(usage_ratio * ready)
    # scaling up with pods not yet ready: count them at 0% and scale up only if that still says up
    new_ratio = usage_ratio * ready / current
    if abs(1.0 - new_ratio) <= tolerance or new_ratio < 1.0:
        return current
    return max(math.ceil(new_ratio * current), current)


@dataclass(frozen=True)
class Behavior:
    """The HPA's default ``behavior`` (autoscaling/v2)."""

    down_window_s: float = 300.0
    up_window_s: float = 0.0
    up_pods: int = 4
    up_percent: float = 100.0
    down_percent: float = 100.0


def hpa_normalize(
    current: int,
    recommendation: int,
    history: list[tuple[float, int]],
    now: float,
    lo: int,
    hi: int,
    behavior: Behavior = Behavior(),
) -> int:
    """``normalizeDesiredReplicasWithBehaviors``: stabilization windows over ``history`` (appended here), then
    the rate limits (one sync period apart: relative to ``current``), then [lo, hi]."""
    history.append((now, recommendation))
    keep = max(behavior.down_window_s, behavior.up_window_s)
    history[:] = [(t, r) for t, r in history if t > now - keep or t == now]
    up = min((r for t, r in history if t > now - behavior.up_window_s or t == now), default=recommendation)
    down = max(
        (r for t, r in history if t > now - behavior.down_window_s or t == now), default=recommendation
    )
    wanted = current
    if wanted < up:
        wanted = up
    if wanted > down:
        wanted = down
    up_limit = max(current + behavior.up_pods, math.ceil(current * (1.0 + behavior.up_percent / 100.0)))
    down_limit = current - math.floor(current * behavior.down_percent / 100.0)
    wanted = min(max(wanted, down_limit), up_limit)
    return min(max(wanted, lo), hi)


@dataclass
class Hpa:
    scenario: Scenario
    period_s: int = 15
    name: str = "hpa-cpu"
    history: list[tuple[float, int]] = field(default_factory=list)

    def decide(self, now: int, current: int, ready: int, view: View) -> int:
        util = view.cpu_utilization(now, self.period_s)
        ratio = None if util is None else util / self.scenario.target_cpu
        rec = hpa_recommend(ready, current - ready, ratio)
        s = self.scenario
        return hpa_normalize(current, rec, self.history, now, s.min_replicas, s.max_replicas)


# -- KEDA ------------------------------------------------------------------------------------------------
def keda_recommend(queue_length: float, target: float, current: int, tolerance: float = TOLERANCE) -> int:
    """An External metric with an AverageValue target: ``ceil(queueLength / target)``, within the HPA's
    tolerance of the current count no change."""
    if current > 0 and abs(1.0 - queue_length / (target * current)) <= tolerance:
        return current
    return math.ceil(queue_length / target)


@dataclass
class Keda:
    scenario: Scenario
    period_s: int = 15  # the HPA KEDA creates syncs every 15 s
    polling_s: int = 30
    cooldown_s: float = 300.0
    name: str = "keda-queue"
    history: list[tuple[float, int]] = field(default_factory=list)
    last_active: float = 0.0
    polled: float = 0.0
    polled_at: float | None = None

    def decide(self, now: int, current: int, ready: int, view: View) -> int:
        s = self.scenario
        if self.polled_at is None or now - self.polled_at >= self.polling_s:
            self.polled, self.polled_at = view.queue_length(now), now
            if self.polled > 0:
                self.last_active = now
        return keda_step(self, now, current, s.min_replicas, s.max_replicas)


def keda_step(k: Keda, now: float, current: int, lo: int, hi: int) -> int:
    """One sync: KEDA's activation and cooldown around zero, the HPA (formula and behaviour) above it."""
    if current == 0:
        return 1 if k.polled > 0 else 0  # activation at the poll that sees a message
    if lo == 0 and k.polled <= 0 and now - k.last_active >= k.cooldown_s:
        k.history.clear()
        return 0
    rec = keda_recommend(k.polled, k.scenario.keda_target, current)
    return hpa_normalize(current, max(rec, 1), k.history, now, max(lo, 1), hi)
