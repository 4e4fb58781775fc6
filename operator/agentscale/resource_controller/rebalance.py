"""GPU rebalancing, the pure part: the fewest evictions that make one node fit a pod the scheduler could not
place for lack of GPUs, while the GPUs it needs are free in total but scattered over nodes.

Inputs are plain values (nodes, the pods bound to them, the pending pod, what each workflow part may lose);
no I/O, no clock. ``rebalance_actuator`` reads the cluster into these and carries out a :class:`Plan`.

A plan, for a pending pod ``P`` and a target node ``N`` that ``P`` may use (its nodeSelector and
tolerations): a set of pods bound to ``N`` whose eviction frees what ``P`` lacks on ``N`` for every resource
it requests (GPUs, MIG slices, CPU, memory), such that

- every evicted pod fits on some other node it may use, together with the other evicted pods (an exact
  assignment, so each replacement has a place to go), with ``P`` counted on ``N``;
- each evicted pod is movable: owned by a workflow's step or model Deployment (its ReplicaSet makes the
  replacement), not terminating, with no required node affinity (the planner does not evaluate it);
- per part, the evictions are at most the PodDisruptionBudget's ``status.disruptionsAllowed`` and at most
  ``ready - min_ready`` (the part keeps its minimum ready replicas while the replacement starts: the extra
  ready replica is the surge; see ``rebalance_actuator``);
- the part's workflow has SLO headroom (:func:`headroom`; unknown is no headroom).

The plan with the fewest evictions wins; ties go to fewer GPUs moved, then to the node name. The search is
exact: for each eligible node, subsets of its movable pods by increasing size up to ``max_moves``, each
checked by a backtracking assignment of the evicted pods to other nodes. Bound: with ``c`` candidate pods on
a node (at most ``max_candidates``, 16 by default, the largest first) and ``k = max_moves`` (4), at most
sum_{i<=k} C(c, i) = 2,516 subsets per node, each assignment trying at most (nodes)^k placements; the unit
tests plan over 40 nodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING

from agentscale.api.models import parse_quantity
from agentscale.resource_controller.budgets import heaviest_paths
from agentscale.resource_controller.snapshot import Decision, Direction, WorkflowSnapshot

GPU_PREFIX = "nvidia.com/"
SCHEDULING_EFFECTS = ("NoSchedule", "NoExecute")


def quantity(resource: str, value: object) -> int:
    """A request as an integer: CPU in millicores, everything else in units (bytes, GPUs), rounded up.
    ValueError naming the resource when ``value`` is not a Kubernetes quantity."""
    q = parse_quantity(value)
    if q is None:
        raise ValueError(f"{resource}: {value!r} is not a Kubernetes quantity")
    if resource == "cpu":
        q = q * 1000
    return int(q.to_integral_value(rounding=ROUND_CEILING))


def is_gpu(resource: str) -> bool:
    """``nvidia.com/gpu``, ``nvidia.com/gpu.shared`` and the MIG slices ``nvidia.com/mig-<profile>``."""
    return resource.startswith(GPU_PREFIX)


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class Placement:
    """What a pod asks of a node: labels (nodeSelector) and the taints it tolerates."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    def admits(self, node: Node) -> bool:
        if node.unschedulable:
            return False
        if any(node.labels.get(k) != v for k, v in self.node_selector.items()):
            return False
        return all(
            any(t.tolerates(taint) for t in self.tolerations)
            for taint in node.taints
            if taint.effect in SCHEDULING_EFFECTS
        )


@dataclass(frozen=True)
class Node:
    name: str
    allocatable: Mapping[str, int]
    """Resource -> what pods may request in all (``quantity`` units)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False


@dataclass(frozen=True)
class PartRef:
    """One step or model of a workflow: whose replicas a pod is."""

    namespace: str
    workflow: str
    component: str
    part: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.workflow} {self.component}/{self.part}"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    requests: Mapping[str, int]
    placement: Placement = field(default_factory=Placement)
    node: str = ""
    """Where it is bound ("" for a pending pod)."""
    owner: PartRef | None = None
    """The workflow part whose Deployment made it; None for anything else (never moved)."""
    terminating: bool = False
    node_affinity: bool = False
    """It has a required node affinity (not evaluated here: such a pod is never moved, nor planned for)."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def gpus(self) -> dict[str, int]:
        return {r: n for r, n in self.requests.items() if is_gpu(r) and n > 0}


@dataclass(frozen=True)
class Allowance:
    """What one part may lose now. ``disruptions_allowed``: its PDB's ``status.disruptionsAllowed`` (None:
    no PDB). ``headroom``: its workflow has SLO headroom (:func:`headroom`)."""

    ready: int
    min_ready: int
    disruptions_allowed: int | None
    headroom: bool
    why_not: str = ""
    """Why the workflow has no headroom (shown in a refusal)."""

    def may_lose(self) -> int:
        if not self.headroom:
            return 0
        n = self.ready - self.min_ready
        if self.disruptions_allowed is not None:
            n = min(n, self.disruptions_allowed)
        return max(0, n)


@dataclass(frozen=True)
class Move:
    pod: Pod
    to: str
    """A node the pod fits on once evicted (the scheduler decides where its replacement goes)."""


@dataclass(frozen=True)
class Plan:
    pending: Pod
    node: str
    moves: tuple[Move, ...]

    @property
    def gpus_moved(self) -> int:
        return sum(sum(m.pod.gpus().values()) for m in self.moves)

    def describe(self) -> str:
        need = _amounts(self.pending.gpus())
        moved = "; ".join(f"{m.pod.key} ({_amounts(m.pod.gpus())}) -> fits on {m.to}" for m in self.moves)
        return f"free {need} on {self.node} for {self.pending.key} by evicting {len(self.moves)}: {moved}"


def _amounts(resources: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(resources.items()))


@dataclass(frozen=True)
class Refusal:
    pending: Pod
    reason: str


@dataclass(frozen=True)
class Limits:
    max_moves: int = 4
    """Evictions per plan at most (a plan needing more is refused)."""
    max_candidates: int = 16
    """Movable pods considered per node at most (the largest GPU requests first)."""


def free_capacity(nodes: Iterable[Node], pods: Iterable[Pod]) -> dict[str, dict[str, int]]:
    """Node -> resource -> allocatable minus what the pods bound there request (terminating pods still hold
    theirs: the scheduler counts them until they are gone)."""
    free = {n.name: dict(n.allocatable) for n in nodes}
    for p in pods:
        if p.node in free:
            for r, q in p.requests.items():
                free[p.node][r] = free[p.node].get(r, 0) - q
    return free


def fits(requests: Mapping[str, int], free: Mapping[str, int]) -> bool:
    return all(q <= 0 or free.get(r, 0) >= q for r, q in requests.items())


def _take(free: dict[str, int], requests: Mapping[str, int], sign: int) -> None:
    for r, q in requests.items():
        free[r] = free.get(r, 0) - sign * q


def _assign(pods: Sequence[Pod], nodes: Sequence[Node], free: dict[str, dict[str, int]]) -> list[str] | None:
    """An exact placement of ``pods`` on ``nodes`` within ``free`` (mutated and restored), or None."""
    if not pods:
        return []
    first, rest = pods[0], pods[1:]
    for node in nodes:
        room = free[node.name]
        if first.placement.admits(node) and fits(first.requests, room):
            _take(room, first.requests, 1)
            tail = _assign(rest, nodes, free)
            _take(room, first.requests, -1)
            if tail is not None:
                return [node.name, *tail]
    return None


def movable(pod: Pod, allowances: Mapping[PartRef, Allowance]) -> bool:
    if pod.owner is None or pod.terminating or pod.node_affinity or not pod.gpus():
        return False
    a = allowances.get(pod.owner)
    return a is not None and a.may_lose() > 0


def plan_for(
    pending: Pod,
    nodes: Sequence[Node],
    bound: Sequence[Pod],
    allowances: Mapping[PartRef, Allowance],
    limits: Limits = Limits(),
) -> Plan | Refusal:
    """The fewest evictions that let ``pending`` fit on one node (module docstring), or why there are none."""
    need = pending.gpus()
    if not need:
        return Refusal(pending, "it requests no GPU")
    if pending.node_affinity:
        return Refusal(pending, "it has a required node affinity, which the rebalancer does not evaluate")
    free = free_capacity(nodes, bound)
    eligible = [n for n in nodes if pending.placement.admits(n)]
    if not eligible:
        return Refusal(pending, "no node matches its nodeSelector and tolerations")
    if any(fits(pending.requests, free[n.name]) for n in eligible):
        return Refusal(pending, "a node fits it already (the scheduler will place it)")
    for r, q in need.items():
        total = sum(max(0, free[n.name].get(r, 0)) for n in eligible)
        if total < q:
            return Refusal(
                pending, f"{q} {r} requested, {total} free in all on the nodes it may use: add GPUs"
            )
    best: Plan | None = None
    blocked: list[str] = []
    by_node: dict[str, list[Pod]] = {}
    for p in bound:
        by_node.setdefault(p.node, []).append(p)
    for node in sorted(eligible, key=lambda n: n.name):
        deficit = {r: q - free[node.name].get(r, 0) for r, q in pending.requests.items()}
        deficit = {r: d for r, d in deficit.items() if d > 0}
        if any(not is_gpu(r) for r in deficit):
            continue  # short of CPU or memory there: not a GPU fragmentation this planner resolves
        on_node = by_node.get(node.name, [])
        gpu_pods = [p for p in on_node if any(p.gpus().get(r, 0) for r in deficit)]
        candidates = [p for p in gpu_pods if movable(p, allowances)]
        if len(candidates) < len(gpu_pods):
            blocked.extend(_why_not(p, allowances) for p in gpu_pods if p not in candidates)
        candidates.sort(key=lambda p: (-sum(p.gpus().values()), p.key))
        candidates = candidates[: limits.max_candidates]
        others = [n for n in sorted(nodes, key=lambda n: n.name) if n.name != node.name]
        upto = limits.max_moves if best is None else min(limits.max_moves, len(best.moves))
        for k in range(1, upto + 1):
            found = _best_subset(pending, node, k, deficit, candidates, others, free, allowances)
            if found is not None:
                if best is None or (len(found.moves), found.gpus_moved) < (len(best.moves), best.gpus_moved):
                    best = found
                break
    if best is not None:
        return best
    why = f"no set of at most {limits.max_moves} movable pods on one node frees enough and fits elsewhere"
    if blocked:
        why += f" (not movable: {'; '.join(sorted(set(blocked))[:4])})"
    return Refusal(pending, why)


def _best_subset(
    pending: Pod,
    node: Node,
    k: int,
    deficit: Mapping[str, int],
    candidates: Sequence[Pod],
    others: Sequence[Node],
    free: dict[str, dict[str, int]],
    allowances: Mapping[PartRef, Allowance],
) -> Plan | None:
    best: Plan | None = None
    for subset in itertools.combinations(candidates, k):
        if any(sum(p.requests.get(r, 0) for p in subset) < d for r, d in deficit.items()):
            continue
        per_part: dict[PartRef, int] = {}
        for p in subset:
            assert p.owner is not None
            per_part[p.owner] = per_part.get(p.owner, 0) + 1
        if any(n > allowances[o].may_lose() for o, n in per_part.items()):
            continue
        order = sorted(subset, key=lambda p: -sum(p.gpus().values()))
        where = _assign(order, others, free)
        if where is None:
            continue
        plan = Plan(pending, node.name, tuple(Move(p, to) for p, to in zip(order, where, strict=True)))
        if best is None or plan.gpus_moved < best.gpus_moved:
            best = plan
    return best


def _why_not(pod: Pod, allowances: Mapping[PartRef, Allowance]) -> str:
    if pod.owner is None:
        return f"{pod.key} is not a workflow's step or model pod"
    if pod.terminating:
        return f"{pod.key} is terminating"
    if pod.node_affinity:
        return f"{pod.key} has a required node affinity"
    a = allowances.get(pod.owner)
    if a is None:
        return f"{pod.owner}: unknown"
    if not a.headroom:
        return f"{pod.owner}: no SLO headroom ({a.why_not or 'unknown'})"
    if a.disruptions_allowed is not None and a.disruptions_allowed < 1:
        return f"{pod.owner}: its PodDisruptionBudget allows no disruption now"
    return f"{pod.owner}: {a.ready} ready, minimum {a.min_ready}"


def plan(
    pending: Sequence[Pod],
    nodes: Sequence[Node],
    bound: Sequence[Pod],
    allowances: Mapping[PartRef, Allowance],
    limits: Limits = Limits(),
) -> tuple[Plan | None, list[Refusal]]:
    """The first plan over the pending pods in order (oldest first, as the caller sorts them), and the
    refusals for those before it. One plan at a time: the next is made once this one's pod is placed."""
    refusals: list[Refusal] = []
    for p in pending:
        out = plan_for(p, nodes, bound, allowances, limits)
        if isinstance(out, Plan):
            return out, refusals
        refusals.append(out)
    return None, refusals


def headroom(
    snap: WorkflowSnapshot, decisions: Iterable[Decision], unavailable: bool, fraction: float, assume: bool
) -> tuple[bool, str]:
    """Whether a workflow may lose a replica for a while: its measured critical path (the heaviest
    source-to-sink sum of step p95 latencies) is at most ``fraction`` of its p95 target, no part is scaling
    up this cycle, and metrics are available. A step without a measured p95 makes it unknown: no headroom,
    unless ``assume`` (``AGENTSCALE_RC_REBALANCE_HEADROOM=assume``: clusters without Prometheus)."""
    if unavailable:
        return False, "metrics unavailable"
    up = sorted(d.target for d in decisions if d.direction == Direction.up)
    if up:
        return False, f"scaling up {', '.join(up)}"
    p95 = {p.name: p.signals.p95_latency_s for p in snap.steps}
    unknown = sorted(n for n, v in p95.items() if v is None)
    if unknown:
        if assume:
            return True, "no p95 measured; headroom assumed (AGENTSCALE_RC_REBALANCE_HEADROOM=assume)"
        return False, f"no p95 measured for step {', '.join(unknown)}"
    weights = {n: float(v or 0.0) for n, v in p95.items()}
    critical = max(heaviest_paths(snap, weights).values(), default=0.0)
    limit = fraction * snap.slo_p95_s
    if critical > limit:
        return False, f"critical path p95 {critical * 1000:.0f} ms > {fraction:g} x target"
    return True, f"critical path p95 {critical * 1000:.0f} ms <= {limit * 1000:.0f} ms"
