"""Right-sizing, the policy: CPU and memory requests of a part's pods from their observed usage. Pure.

For one step or model server with ``rightsizing.enabled``, :func:`plan_part` takes what its pods used over
the window (:class:`Usage`, per pod: the CPU usage percentile and the memory peak, from
``rightsize_signals``), the recommendation in force (the workflow's ``status.rightsizing``) and the pods'
current requests, and answers a :class:`PartPlan`: the recommendation after this round and the in-place
resizes to make.

- Recommendation: CPU = max(the highest pod's p<percentile> x (1 + margin), minCpu); memory = max(the highest
  pod's peak x (1 + margin), minMemory). So a request is never below the observed value plus margin: the
  percentile for CPU (compressible: a pod past its request is slowed, never killed) and the peak for memory.
  CPU is rounded up to whole millicores, memory up to whole MiB.
- Only pods observed for at least ``min_coverage`` x the window count; without one, no new recommendation.
- Hysteresis: the recommendation moves at most once per window (``windowSeconds``) and only when a resource
  moves beyond ``threshold`` of the one in force (either way); memory below its observed peak plus margin is
  raised whatever the threshold (still at most once per window).
- Resizes: every running pod whose requests differ from the recommendation is resized, at most once per pod
  per window (``recently``: pods resized within the window). A request never exceeds the container's limit:
  it is capped there (limits are the spec's and stay the operator's). A pod whose container is Guaranteed
  (requests equal limits for CPU and memory) is left alone: an in-place resize may not change the QoS class.
- Only ``cpu`` and ``memory`` requests are ever written: never a GPU, MIG slice or any other resource.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from agentscale.api.models import Rightsizing, parse_quantity

MIB = 1 << 20
RESOURCES = ("cpu", "memory")
"""The only resources right-sizing writes."""
SAME = 0.01
"""A pod whose request is within this fraction of the recommendation already has it (rounding)."""


@dataclass(frozen=True)
class Usage:
    """One pod's main container over the window."""

    cpu: float
    """Cores: the usage percentile."""
    memory: float
    """Bytes: the peak working set (or resident set)."""
    observed_s: float
    """Seconds of the window that have series."""
    source: str = ""
    """Where it came from (``cadvisor`` or ``process``)."""


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str
    container: str
    requests: dict[str, float] = field(default_factory=dict)
    """cpu in cores, memory in bytes; absent when unset."""
    limits: dict[str, float] = field(default_factory=dict)
    usage: Usage | None = None
    resizing: bool = False
    """A resize is pending or in progress (the kubelet has not finished the last one)."""

    @property
    def guaranteed(self) -> bool:
        return all(
            r in self.requests and r in self.limits and self.requests[r] == self.limits[r] for r in RESOURCES
        )


@dataclass(frozen=True)
class Recommendation:
    cpu: float
    """Cores."""
    memory: float
    """Bytes."""
    since: float
    """Wall time it took effect."""
    observed_cpu: float | None = None
    observed_memory: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class Resize:
    pod: str
    uid: str
    container: str
    requests: dict[str, str]
    """Only cpu and/or memory, as quantities."""
    note: str = ""


@dataclass(frozen=True)
class PartPlan:
    key: str
    recommendation: Recommendation | None
    """In force after this round (None: never had data)."""
    changed: bool
    resizes: tuple[Resize, ...] = ()
    note: str = ""
    """Why nothing changed, when nothing did."""


def cpu_text(cores: float) -> str:
    return f"{max(1, math.ceil(round(cores * 1000, 6)))}m"


def memory_text(b: float) -> str:
    return f"{max(1, math.ceil(round(b / MIB, 6)))}Mi"


def text(resource: str, value: float) -> str:
    return cpu_text(value) if resource == "cpu" else memory_text(value)


def rounded(resource: str, value: float) -> float:
    """The value as :func:`text` writes it (whole millicores, whole MiB, rounded up)."""
    return float(parse_quantity(text(resource, value)) or 0)


def quantities(raw: dict[str, object] | None) -> dict[str, float]:
    """cpu and memory of a requests or limits map, as numbers (cores, bytes); others and junk left out."""
    out = {}
    for r in RESOURCES:
        q = parse_quantity((raw or {}).get(r)) if raw and r in raw else None
        if q is not None:
            out[r] = float(q)
    return out


def moved(new: float, old: float, threshold: float) -> bool:
    """``new`` is beyond ``threshold`` of ``old`` (either way)."""
    if old <= 0:
        return new > 0
    return abs(new - old) / old >= threshold


def recommend(
    pods: Sequence[PodView], s: Rightsizing, min_coverage: float
) -> tuple[float, float, float, float] | None:
    """(cpu, memory, observed cpu, observed memory) from the pods observed long enough, else None."""
    seen = [
        p.usage for p in pods if p.usage is not None and p.usage.observed_s >= min_coverage * s.windowSeconds
    ]
    if not seen:
        return None
    cpu_obs, mem_obs = max(u.cpu for u in seen), max(u.memory for u in seen)
    min_cpu, min_mem = s.floors()
    cpu = rounded("cpu", max(cpu_obs * (1 + s.margin), min_cpu))
    memory = rounded("memory", max(mem_obs * (1 + s.margin), min_mem))
    return cpu, memory, cpu_obs, mem_obs


def _reason(
    s: Rightsizing,
    observed: tuple[float, float],
    wanted: tuple[float, float],
    before: tuple[float, float] | None,
    after: tuple[float, float],
    threshold: float,
) -> str:
    """``cpu p95 180m x1.2 = 216m; memory peak 250Mi x1.2 = 300Mi; 500m/512Mi -> 216m/300Mi``; a resource
    the floor (minCpu, minMemory) set says ``cpu p95 4m x1.2 under the floor 50m``, and one kept within the
    threshold says so."""
    m = f"x{1 + s.margin:g}"
    floors = s.floors()
    parts = []
    for i, (what, r) in enumerate(((f"cpu p{s.percentile}", "cpu"), ("memory peak", "memory"))):
        grown = observed[i] * (1 + s.margin)
        if grown < floors[i]:  # the floor set it, not the observation
            part = f"{what} {text(r, observed[i])} {m} under the floor {text(r, floors[i])}"
        else:
            part = f"{what} {text(r, observed[i])} {m} = {text(r, wanted[i])}"
        if after[i] != wanted[i]:
            part += f" (within {threshold:.0%} of {text(r, after[i])}: kept)"
        parts.append(part)
    was = f"{cpu_text(before[0])}/{memory_text(before[1])}" if before else "unset"
    return f"{'; '.join(parts)}; {was} -> {cpu_text(after[0])}/{memory_text(after[1])}"


def baseline(pods: Sequence[PodView]) -> tuple[float, float] | None:
    """Before any recommendation: the largest current requests among the pods (the spec's, as rendered)."""
    cpus = [p.requests["cpu"] for p in pods if "cpu" in p.requests]
    mems = [p.requests["memory"] for p in pods if "memory" in p.requests]
    return (max(cpus), max(mems)) if cpus and mems else None


def plan_part(
    key: str,
    s: Rightsizing,
    pods: Sequence[PodView],
    current: Recommendation | None,
    now: float,
    threshold: float,
    min_coverage: float,
    recently: Collection[str] = (),
) -> PartPlan:
    """This round for one part: the recommendation after it and the resizes to make (see the module)."""
    rec, changed, note = current, False, ""
    got = recommend(pods, s, min_coverage)
    if got is None:
        need = int(min_coverage * s.windowSeconds)
        note = f"waiting for usage: no pod has {need} s of series in the {s.windowSeconds} s window yet"
    else:
        cpu, memory, cpu_obs, mem_obs = got
        before = (current.cpu, current.memory) if current else baseline(pods)
        if current is not None and now - current.since < s.windowSeconds:
            note = f"held: the requests changed {now - current.since:.0f} s ago (window {s.windowSeconds} s)"
        elif before is None:
            changed = True
        else:
            new_cpu = cpu if moved(cpu, before[0], threshold) else before[0]
            low = before[1] < mem_obs * (1 + s.margin)  # never below the observed peak plus margin
            new_mem = memory if low or moved(memory, before[1], threshold) else before[1]
            changed = (new_cpu, new_mem) != before
            cpu, memory = new_cpu, new_mem
            if not changed:  # no numbers: the note is written to status, and must not change every round
                note = f"usage needs the requests in force to within {threshold:.0%}: no change"
        if changed:
            reason = _reason(s, (cpu_obs, mem_obs), got[:2], before, (cpu, memory), threshold)
            rec = Recommendation(cpu, memory, now, cpu_obs, mem_obs, reason)
    if rec is None:
        return PartPlan(key, None, False, (), note)
    resizes = tuple(r for p in pods if (r := resize_for(p, rec, recently)) is not None)
    return PartPlan(key, rec, changed, resizes, note)


def resize_for(pod: PodView, rec: Recommendation, recently: Collection[str] = ()) -> Resize | None:
    """The resize that brings one pod to ``rec`` (each request capped at its limit), or None when it has it
    already, was resized within the window, is still resizing, or is Guaranteed."""
    if pod.resizing or pod.uid in recently or pod.guaranteed:
        return None
    want: dict[str, str] = {}
    notes = []
    for r, value in (("cpu", rec.cpu), ("memory", rec.memory)):
        limit = pod.limits.get(r)
        if limit is not None and value > limit:
            value = limit
            notes.append(f"{r} capped at its limit {text(r, limit)}")
        have = pod.requests.get(r)
        if have is None or abs(value - have) > SAME * max(have, value):
            want[r] = text(r, value) if limit is None or value < limit else text_exact(r, limit)
    if not want:
        return None
    return Resize(pod.name, pod.uid, pod.container, want, "; ".join(notes))


def text_exact(resource: str, value: float) -> str:
    """A limit written back as a request: exact (rounding up could pass the limit)."""
    if resource == "cpu":
        return f"{math.floor(round(value * 1000, 6))}m"
    return str(int(value))
