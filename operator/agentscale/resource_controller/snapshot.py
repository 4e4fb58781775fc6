"""What the policy reads and what it answers: plain, frozen data.

A :class:`WorkflowSnapshot` is everything the policy may know about one workflow at one instant: per part
(a step or a model server) its replicas, bounds, mode, targets and measured :class:`Signals`; the DAG
(``Part.next``); the end-to-end p95 target; and the time. The sensors (Prometheus, the cluster cache) fill
it; the policy never reads anything else, not even the clock. A :class:`Decision` per controlled part is the
answer, with one line a person can read.

A signal the sensors could not read is ``None``. The policy treats ``None`` as "unknown", never as zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType

from agentscale.api.models import Scaling, ScalingMode


class PartKind(StrEnum):
    step = "step"
    model = "model"


@dataclass(frozen=True)
class Bounds:
    """[lo, hi] replicas a part may run (``Scaling.bounds()`` as plain data)."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 0 <= self.lo <= self.hi:
            raise ValueError(f"bounds need 0 <= lo <= hi, got [{self.lo}, {self.hi}]")

    @classmethod
    def of(cls, scaling: Scaling) -> Bounds:
        """The bounds the API's one rule gives (``Scaling.bounds``), so the policy cannot disagree with it."""
        lo, hi = scaling.bounds()
        return cls(lo, hi)

    def clamp(self, replicas: int) -> int:
        return min(max(replicas, self.lo), self.hi)


@dataclass(frozen=True)
class BatchProfile:
    """One replica's measured service time for a batch: ``base_s + per_sample_s x batch`` (the line
    ``bench/dataplane/bench_profile.py`` fits per model into ``bench/dataplane/results/profile.json``)."""

    base_s: float
    per_sample_s: float
    max_batch: int = 1

    @classmethod
    def from_ms(cls, base_ms: float, per_sample_ms: float, max_batch: int = 1) -> BatchProfile:
        """From a line of ``profile.json`` (``base_ms``, ``per_sample_ms``, ``max_batch``)."""
        return cls(base_ms / 1000.0, per_sample_ms / 1000.0, max(1, max_batch))

    def per_request_s(self, batch: float) -> float:
        """Replica-seconds per request when requests are served in batches of ``batch`` (clamped to
        [1, max_batch]): the batch's service time shared by its requests."""
        b = min(max(batch, 1.0), float(self.max_batch))
        return (self.base_s + self.per_sample_s * b) / b


@dataclass(frozen=True)
class Signals:
    """Measurements of one part; ``None`` where the sensors had nothing."""

    arrival_rps: float | None = None
    """Requests (steps: messages; models: inferences) arriving per second over the stable window."""
    arrival_rps_short: float | None = None
    """The same over the short (panic) window."""
    service_time_s: float | None = None
    """Replica-seconds per request: 1 / the throughput one replica sustains. Wins over ``Part.profile``."""
    mean_batch: float | None = None
    """Mean batch size the model served (picks the point on ``Part.profile``); 1 when unknown."""
    queue_lag: float | None = None
    """Steps: messages waiting in the step's stream. Every worker of a step reports the same stream, so the
    sensors aggregate with max across workers, never sum."""
    p95_latency_s: float | None = None
    """p95 latency of the part over the stable window (from histogram buckets)."""
    queue_time_s: float | None = None
    """Models: Triton queue time per request (``nv_inference_queue_duration_us`` / requests)."""
    fan_out: float | None = None
    """Steps: messages sent to each next step per message processed; 1 when unknown."""


_CONTROLLED_MODES = frozenset(
    mode for mode in ScalingMode if Scaling.model_construct(mode=mode).controller_owns_replicas()
)
"""The modes in which the resource controller owns a part's replicas: the API's one ownership rule
(``Scaling.controller_owns_replicas``, which reads the mode alone), asked once per mode at import, not per
part per cycle (building a pydantic model costs microseconds; a fleet has thousands of parts)."""


@dataclass(frozen=True)
class Part:
    """One step or model server of a workflow, as the policy sees it."""

    kind: PartKind
    name: str
    mode: ScalingMode
    replicas: int
    bounds: Bounds
    signals: Signals = field(default_factory=Signals)
    profile: BatchProfile | None = None
    next: tuple[str, ...] = ()
    model: str | None = None
    target_queue_lag_per_replica: float = 20.0
    target_queue_time_s: float = 0.020
    scale_down_stabilization_s: float = 120.0
    cold_start_s: float = 0.0
    """Seconds from a scale-up to a ready replica (the loop's ``PolicyConfig.startup_s``)."""
    slots: int = 1
    """What one replica serves at once (a step's ``concurrency``): a message's own service time is
    ``service_time_s() x slots``."""

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"{self.key}: replicas must be >= 0, got {self.replicas}")
        if self.target_queue_lag_per_replica <= 0 or self.target_queue_time_s <= 0:
            raise ValueError(f"{self.key}: queue targets must be > 0")
        if self.cold_start_s < 0 or self.slots < 1:
            raise ValueError(f"{self.key}: cold_start_s must be >= 0 and slots >= 1")

    @classmethod
    def of(cls, kind: PartKind, name: str, scaling: Scaling, replicas: int, **kwargs: object) -> Part:
        """A part from the API's ``Scaling`` (mode, bounds, targets) and the replicas running now."""
        return cls(
            kind=kind,
            name=name,
            mode=scaling.mode,
            replicas=replicas,
            bounds=Bounds.of(scaling),
            target_queue_lag_per_replica=float(scaling.targetQueueLagPerReplica),
            target_queue_time_s=scaling.targetQueueTimeMs / 1000.0,
            scale_down_stabilization_s=float(scaling.scaleDownStabilizationSeconds),
            **kwargs,  # type: ignore[arg-type]
        )

    @cached_property
    def key(self) -> str:
        """``step/<name>`` or ``model/<name>``, as ``status.lastScalingDecision.target`` names it."""
        return f"{self.kind}/{self.name}"

    @property
    def controlled(self) -> bool:
        """The resource controller owns this part's replicas (the API's one ownership rule, by mode)."""
        return self.mode in _CONTROLLED_MODES

    def service_time_s(self) -> float | None:
        """Measured replica-seconds per request, else the profile's at the measured batch, else None."""
        s = self.signals
        if s.service_time_s is not None and s.service_time_s > 0:
            return s.service_time_s
        if self.profile is not None:
            return self.profile.per_request_s(s.mean_batch or 1.0)
        return None


@dataclass(frozen=True)
class WorkflowSnapshot:
    """One workflow at one instant. ``now`` is seconds on any monotonic clock the caller keeps."""

    namespace: str
    name: str
    now: float
    slo_p95_s: float
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        if self.slo_p95_s <= 0:
            raise ValueError("slo_p95_s must be > 0")
        keys = [p.key for p in self.parts]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.namespace}/{self.name}: duplicate parts in {keys}")
        steps = {p.name for p in self.steps}
        for p in self.steps:
            unknown = [n for n in p.next if n not in steps]
            if unknown:
                raise ValueError(f"step {p.name}: next names unknown steps {unknown}")
        self.step_order()  # raises on a cycle

    def step_order(self) -> tuple[str, ...]:
        """Step names with every step after all the steps that feed it (Kahn's algorithm, stable in spec
        order); ValueError naming the steps on a cycle (the operator reports those as Degraded)."""
        return self._step_order

    # The topology is computed once per snapshot: the instance is frozen and so is every part, so nothing
    # cached here can go stale (``dataclasses.replace`` builds a new snapshot, with empty caches).
    @cached_property
    def _step_order(self) -> tuple[str, ...]:
        steps = self.steps
        indegree = {p.name: 0 for p in steps}
        for p in steps:
            for n in p.next:
                indegree[n] += 1
        nexts = {p.name: p.next for p in steps}
        ready = [p.name for p in steps if indegree[p.name] == 0]
        order: list[str] = []
        while ready:
            name = ready.pop(0)
            order.append(name)
            for n in nexts[name]:
                indegree[n] -= 1
                if indegree[n] == 0:
                    ready.append(n)
        if len(order) != len(steps):
            cycle = sorted(n for n, d in indegree.items() if d > 0)
            raise ValueError(f"steps {cycle} form a cycle in next")
        return tuple(order)

    @cached_property
    def steps(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.kind == PartKind.step)

    @cached_property
    def models(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.kind == PartKind.model)

    @cached_property
    def step_inputs(self) -> Mapping[str, tuple[str, ...]]:
        """Step name -> the steps whose ``next`` names it, in spec order (empty for a source)."""
        inputs: dict[str, list[str]] = {p.name: [] for p in self.steps}
        for p in self.steps:
            for n in p.next:
                inputs[n].append(p.name)
        return MappingProxyType({name: tuple(feeders) for name, feeders in inputs.items()})

    def by_key(self) -> Mapping[str, Part]:
        return {p.key: p for p in self.parts}


class Direction(StrEnum):
    up = "up"
    down = "down"
    hold = "hold"


class Rule(StrEnum):
    """What set a decision's number; one CamelCase word, fit for an Event reason and a metric label."""

    QueueLag = "QueueLag"  # backlog per replica over targetQueueLagPerReplica
    ArrivalRate = "ArrivalRate"  # Little's law on the (forecast, fed-forward) arrival rate plus backlog drain
    QueueTime = "QueueTime"  # Triton queue time per request over targetQueueTimeMs
    LatencyBudget = "LatencyBudget"  # M/M/c sized to the part's share of the p95 target
    BudgetUnmeetable = "BudgetUnmeetable"  # no replica count within bounds meets the budget
    BudgetBelowService = "BudgetBelowService"  # budget below the service p95: sized for utilization
    Panic = "Panic"  # short-window rate far above capacity: up at once, never down
    Wake = "Wake"  # work arrived for a part at zero
    Idle = "Idle"  # no work for the idle window: to zero
    FailStatic = "FailStatic"  # signals missing: hold, never down
    Tolerance = "Tolerance"  # change within the tolerance band
    Stabilization = "Stabilization"  # scale-down held at the window's highest recommendation
    Cooldown = "Cooldown"  # too soon after the last change
    MaxStep = "MaxStep"  # change limited per cycle
    Bounds = "Bounds"  # moved into [min, max]


@dataclass(frozen=True)
class Decision:
    """The replicas one controlled part should run, and why, in one line."""

    target: str
    from_replicas: int
    to_replicas: int
    rule: Rule
    reason: str
    missing: tuple[str, ...] = ()
    """Signals that were None this cycle (named in the reason; ``MetricsUnavailable`` is the loop's, per
    workflow: Prometheus failed, or a part has no series at all)."""

    @property
    def direction(self) -> Direction:
        if self.to_replicas > self.from_replicas:
            return Direction.up
        if self.to_replicas < self.from_replicas:
            return Direction.down
        return Direction.hold

    @property
    def changed(self) -> bool:
        return self.to_replicas != self.from_replicas


def num(x: float) -> str:
    """A number for a reason line: at most four significant digits, no trailing zeros."""
    return f"{x:.4g}"


def ms(seconds: float) -> str:
    return f"{num(seconds * 1000.0)} ms"
