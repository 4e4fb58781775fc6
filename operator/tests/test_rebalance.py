"""The GPU rebalancer's planner (``resource_controller/rebalance.py``), table-driven on plain values."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from agentscale.api.models import Scaling
from agentscale.resource_controller import rebalance as R
from agentscale.resource_controller.snapshot import Decision, Part, PartKind, Rule, Signals, WorkflowSnapshot

GPU = "nvidia.com/gpu"
MIG = "nvidia.com/mig-1g.10gb"
H100 = {"nvidia.com/gpu.product": "H100"}
GPU_TAINT = (R.Taint("nvidia.com/gpu", "present", "NoSchedule"),)
TOLERATE = R.Placement({}, (R.Toleration("nvidia.com/gpu", "Exists", "", "NoSchedule"),))


def node(name: str, gpus: int = 8, resource: str = GPU, labels: dict[str, str] | None = None) -> R.Node:
    alloc = {resource: gpus, "cpu": 64000, "memory": 512 << 30, "pods": 500}
    return R.Node(name, alloc, labels if labels is not None else dict(H100), GPU_TAINT)


def part(name: str, ns: str = "ns", wf: str = "wf", component: str = "model") -> R.PartRef:
    return R.PartRef(ns, wf, component, name)


def pod(
    name: str,
    where: str,
    gpus: int,
    owner: str | None = "m",
    resource: str = GPU,
    placement: R.Placement = TOLERATE,
    **kw: object,
) -> R.Pod:
    return R.Pod(
        "ns",
        name,
        {resource: gpus, "cpu": 1000},
        placement,
        where,
        part(owner) if owner else None,
        **kw,
    )


def allow(ready: int = 3, min_ready: int = 1, pdb: int | None = 1, headroom: bool = True) -> R.Allowance:
    return R.Allowance(ready, min_ready, pdb, headroom, "" if headroom else "p95 over")


@dataclass
class Case:
    id: str
    nodes: list[R.Node]
    bound: list[R.Pod]
    pending: R.Pod
    allowances: dict[R.PartRef, R.Allowance] = field(default_factory=dict)
    evicted: set[str] | None = None  # None: a refusal is expected
    target: str | None = None
    refusal: str = ""
    limits: R.Limits = field(default_factory=R.Limits)


def fill(where: str, n: int, size: int, owner: str | None, prefix: str = "") -> list[R.Pod]:
    return [pod(f"{prefix or owner or 'x'}-{where}-{i}", where, size, owner) for i in range(n)]


P4 = pod("want", "", 4, owner="big")
BASE_ALLOW = {part("m"): allow(), part("n"): allow(), part("big"): allow()}

CASES = [
    Case(
        "one-move-frees-a-node",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None), pod("m-a", "a", 1), pod("fixed-b", "b", 4, None), pod("m-b", "b", 1)],
        P4,
        BASE_ALLOW,
        evicted={"ns/m-a"},
        target="a",
    ),
    Case(
        "fewest-moves-prefers-one-2gpu-pod-over-two-1gpu-pods",
        [node("a"), node("b")],
        [
            pod("fixed-a", "a", 2, None),
            pod("m-a1", "a", 1),
            pod("m-a2", "a", 1),
            pod("n-a", "a", 2, "n"),
            pod("fixed-b", "b", 6, None),
        ],
        P4,
        BASE_ALLOW,
        evicted={"ns/n-a"},
        target="a",
    ),
    Case(
        "two-moves-when-no-single-pod-is-enough",
        [node("a"), node("b"), node("c")],
        [
            pod("fixed-a", "a", 4, None),
            pod("m-a", "a", 1),
            pod("n-a", "a", 1, "n"),
            pod("fixed-b", "b", 7, None),
            pod("fixed-c", "c", 7, None),
        ],
        P4,
        BASE_ALLOW,
        evicted={"ns/m-a", "ns/n-a"},
        target="a",
    ),
    Case(
        "evicted-pods-must-fit-together-elsewhere",
        # a has 1 free and two 2-GPU movable pods (both must go: 1 + 4 >= 4); b has 2 free, c 1: each pod
        # fits on b alone, not both together, so no plan.
        [node("a"), node("b"), node("c")],
        [
            pod("fixed-a", "a", 3, None),
            pod("m-a", "a", 2),
            pod("n-a", "a", 2, "n"),
            pod("fixed-b", "b", 6, None),
            pod("fixed-c", "c", 7, None),
        ],
        pod("want", "", 4, owner="big"),
        BASE_ALLOW,
        refusal="fits elsewhere",
    ),
    Case(
        "pdb-allows-no-disruption",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None), pod("m-a", "a", 1), pod("fixed-b", "b", 4, None), pod("m-b", "b", 1)],
        P4,
        {part("m"): allow(pdb=0), part("big"): allow()},
        refusal="PodDisruptionBudget allows no disruption",
    ),
    Case(
        "part-at-its-minimum-ready",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None), pod("m-a", "a", 1), pod("fixed-b", "b", 4, None), pod("m-b", "b", 1)],
        P4,
        {part("m"): allow(ready=2, min_ready=2), part("big"): allow()},
        refusal="2 ready, minimum 2",
    ),
    Case(
        "pdb-allows-one-so-two-of-one-part-is-refused",
        [node("a"), node("b"), node("c")],
        [
            pod("fixed-a", "a", 4, None),
            pod("m-a1", "a", 1),
            pod("m-a2", "a", 1),
            pod("fixed-b", "b", 7, None),
            pod("fixed-c", "c", 7, None),
        ],
        P4,
        {part("m"): allow(ready=4, pdb=1), part("big"): allow()},
        refusal="no set of at most 4",
    ),
    Case(
        "two-of-one-part-when-its-pdb-allows-two",
        [node("a"), node("b"), node("c")],
        [
            pod("fixed-a", "a", 4, None),
            pod("m-a1", "a", 1),
            pod("m-a2", "a", 1),
            pod("fixed-b", "b", 7, None),
            pod("fixed-c", "c", 7, None),
        ],
        P4,
        {part("m"): allow(ready=4, pdb=2), part("big"): allow()},
        evicted={"ns/m-a1", "ns/m-a2"},
        target="a",
    ),
    Case(
        "no-slo-headroom",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None), pod("m-a", "a", 1), pod("fixed-b", "b", 4, None), pod("m-b", "b", 1)],
        P4,
        {part("m"): allow(headroom=False), part("big"): allow()},
        refusal="no SLO headroom (p95 over)",
    ),
    Case(
        "unknown-part-is-not-moved",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None), pod("m-a", "a", 1), pod("fixed-b", "b", 4, None), pod("m-b", "b", 1)],
        P4,
        {},
        refusal="unknown",
    ),
    Case(
        "other-workloads-are-never-moved",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None), pod("x-a", "a", 1, None), pod("fixed-b", "b", 5, None)],
        P4,
        BASE_ALLOW,
        refusal="not a workflow's step or model pod",
    ),
    Case(
        "not-enough-gpus-in-total",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 6, None), pod("m-a", "a", 1), pod("fixed-b", "b", 6, None)],
        P4,
        BASE_ALLOW,
        refusal="free in all on the nodes it may use: add GPUs",
    ),
    Case(
        "fits-already",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None)],
        P4,
        BASE_ALLOW,
        refusal="fits it already",
    ),
    Case(
        "selector-limits-the-target-and-the-free-total",
        # c is an A100 node with 8 free: the pending pod selects H100, so c is neither target nor counted.
        [node("a"), node("b"), node("c", labels={"nvidia.com/gpu.product": "A100"})],
        [pod("fixed-a", "a", 6, None), pod("m-a", "a", 1), pod("fixed-b", "b", 6, None)],
        pod("want", "", 4, owner="big", placement=R.Placement(H100, TOLERATE.tolerations)),
        BASE_ALLOW,
        refusal="free in all",
    ),
    Case(
        "moved-pod-goes-only-where-it-tolerates",
        # the movable pod on a does not tolerate the GPU taint, so it cannot go to b (it could only have got
        # onto a by an older taint-free a: it stays).
        [node("a"), node("b")],
        [
            pod("fixed-a", "a", 4, None),
            pod("m-a", "a", 1, placement=R.Placement()),
            pod("fixed-b", "b", 5, None),
        ],
        P4,
        BASE_ALLOW,
        refusal="no set of at most",
    ),
    Case(
        "terminating-pods-still-hold-their-gpus",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None), pod("m-a", "a", 1, terminating=True), pod("fixed-b", "b", 5, None)],
        P4,
        BASE_ALLOW,
        refusal="is terminating",
    ),
    Case(
        "required-node-affinity-is-not-moved",
        [node("a"), node("b")],
        [pod("fixed-a", "a", 4, None), pod("m-a", "a", 1, node_affinity=True), pod("fixed-b", "b", 5, None)],
        P4,
        BASE_ALLOW,
        refusal="required node affinity",
    ),
    Case(
        "mig-slices-the-same-way",
        [node("mig-a", 7, MIG), node("mig-b", 7, MIG)],
        [
            pod("fixed-a", "mig-a", 4, None, MIG),
            pod("m-a", "mig-a", 1, resource=MIG),
            pod("fixed-b", "mig-b", 4, None, MIG),
            pod("m-b", "mig-b", 1, resource=MIG),
        ],
        pod("want", "", 3, owner="big", resource=MIG),
        BASE_ALLOW,
        evicted={"ns/m-a"},
        target="mig-a",
    ),
    Case(
        "full-gpus-do-not-count-for-mig",
        # the whole-GPU pods on a are not in the MIG deficit: evicting them frees nothing the pod needs.
        [node("mig-a", 7, MIG), node("mig-b", 7, MIG)],
        [pod("fixed-a", "mig-a", 6, None, MIG), pod("fixed-b", "mig-b", 6, None, MIG)],
        pod("want", "", 2, owner="big", resource=MIG),
        BASE_ALLOW,
        refusal="no set of at most",
    ),
    Case(
        "max-moves-bounds-the-plan",
        [node("a"), node("b"), node("c")],
        [
            pod("fixed-a", "a", 4, None),
            pod("m-a", "a", 1),
            pod("n-a", "a", 1, "n"),
            pod("fixed-b", "b", 7, None),
            pod("fixed-c", "c", 7, None),
        ],
        P4,
        BASE_ALLOW,
        refusal="no set of at most 1",
        limits=R.Limits(max_moves=1),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(case: Case) -> None:
    out = R.plan_for(case.pending, case.nodes, case.bound, case.allowances, case.limits)
    if case.evicted is None:
        assert isinstance(out, R.Refusal), out
        assert case.refusal in out.reason, out.reason
        return
    assert isinstance(out, R.Plan), out
    assert out.node == case.target
    assert {m.pod.key for m in out.moves} == case.evicted
    # each evicted pod has a place to go that is not the target, and all of them fit there together
    free = R.free_capacity(case.nodes, case.bound)
    for m in out.moves:
        assert m.to != out.node
        for r, q in m.pod.requests.items():
            free[m.to][r] -= q
    assert all(v >= 0 for room in free.values() for v in room.values()), free
    assert "evicting" in out.describe()


def test_the_plan_respects_every_part_limit_over_many_random_pools() -> None:
    """Random fragmented pools: every plan frees the target for the pending pod, moves no part beyond its
    allowance, and places every evicted pod on another node."""
    import random

    rng = random.Random(7)
    plans = 0
    for _ in range(1000):
        nodes = [node(f"n{i}") for i in range(rng.randint(2, 6))]
        bound, allowances = [], {}
        for n in nodes:
            used = 0
            while used < 8:
                size = rng.choice([1, 1, 2, 4])
                if used + size > 8 or rng.random() < 0.15:
                    break
                owner = rng.choice(["p", "q", "r", None])
                bound.append(pod(f"{owner}-{n.name}-{used}", n.name, size, owner))
                used += size
        for o in ("p", "q", "r"):
            allowances[part(o)] = allow(rng.randint(1, 5), rng.randint(1, 3), rng.choice([0, 1, 2, None]))
        want = pod("want", "", rng.choice([2, 4, 6]), owner="p")
        out = R.plan_for(want, nodes, bound, allowances)
        if not isinstance(out, R.Plan):
            continue
        plans += 1
        free = R.free_capacity(nodes, bound)
        counts: dict[R.PartRef, int] = {}
        for m in out.moves:
            assert m.pod.node == out.node and m.pod.owner is not None
            counts[m.pod.owner] = counts.get(m.pod.owner, 0) + 1
            for r, q in m.pod.requests.items():
                free[out.node][r] += q
                free[m.to][r] -= q
        assert R.fits(want.requests, free[out.node])
        assert all(v >= 0 for name, room in free.items() for v in room.values()), free
        for o, n in counts.items():
            assert n <= allowances[o].may_lose()
    assert plans > 20


def test_forty_nodes_plan_exactly() -> None:
    """Tens of nodes, each with one GPU free: the plan needs one move (a 1-GPU pod off a node with 3 free)."""
    nodes = [node(f"n{i:02d}") for i in range(40)]
    bound = []
    for i, n in enumerate(nodes):
        bound += [pod(f"m-{i}-{j}", n.name, 1) for j in range(4)] + [pod(f"f-{i}", n.name, 3, None)]
    bound = [p for p in bound if p.name != "m-7-0" and p.name != "m-7-1"]  # n07 has 3 free
    out = R.plan_for(P4, nodes, bound, {part("m"): allow(ready=160), part("big"): allow()})
    assert isinstance(out, R.Plan) and out.node == "n07" and len(out.moves) == 1


def test_plan_takes_the_first_pending_pod_with_a_plan() -> None:
    nodes = [node("a"), node("b")]
    bound = [
        pod("fixed-a", "a", 4, None),
        pod("m-a", "a", 1),
        pod("fixed-b", "b", 4, None),
        pod("m-b", "b", 1),
    ]
    too_big = pod("huge", "", 9, owner="big")
    got, refusals = R.plan([too_big, P4], nodes, bound, {part("m"): allow(), part("big"): allow()})
    assert got is not None and got.pending is P4
    assert [r.pending.name for r in refusals] == ["huge"]


@pytest.mark.parametrize(
    ("tol", "taint", "ok"),
    [
        (R.Toleration("k", "Exists", "", ""), R.Taint("k", "v", "NoSchedule"), True),
        (R.Toleration("", "Exists", "", ""), R.Taint("any", "v", "NoExecute"), True),
        (R.Toleration("k", "Equal", "v", "NoSchedule"), R.Taint("k", "v", "NoSchedule"), True),
        (R.Toleration("k", "Equal", "w", "NoSchedule"), R.Taint("k", "v", "NoSchedule"), False),
        (R.Toleration("k", "Exists", "", "NoExecute"), R.Taint("k", "v", "NoSchedule"), False),
    ],
)
def test_tolerations(tol: R.Toleration, taint: R.Taint, ok: bool) -> None:
    assert tol.tolerates(taint) is ok


def test_quantity() -> None:
    assert R.quantity("cpu", "500m") == 500 and R.quantity("cpu", 2) == 2000
    assert R.quantity("memory", "1Gi") == 1 << 30 and R.quantity(GPU, "4") == 4
    with pytest.raises(ValueError, match="memory: 'lots' is not a Kubernetes quantity"):
        R.quantity("memory", "lots")


# ---------------------------------------------------------------------------------------------- headroom


def snap(p95: dict[str, float | None], slo_s: float = 1.0, chain: bool = True) -> WorkflowSnapshot:
    names = list(p95)
    parts = tuple(
        Part.of(
            PartKind.step,
            n,
            Scaling(mode="slo", minReplicas=1, maxReplicas=4),
            2,
            signals=Signals(p95_latency_s=p95[n]),
            next=(names[i + 1],) if chain and i + 1 < len(names) else (),
        )
        for i, n in enumerate(names)
    )
    return WorkflowSnapshot("ns", "wf", 0.0, slo_s, parts)


HOLD = [Decision("step/a", 2, 2, Rule.Tolerance, "hold")]
UP = [Decision("step/a", 2, 3, Rule.Tolerance, "up")]


@pytest.mark.parametrize(
    ("case", "s", "decisions", "unavailable", "assume", "ok", "says"),
    [
        ("under", snap({"a": 0.2, "b": 0.3}), HOLD, False, False, True, "500 ms <= 800 ms"),
        ("critical-path-over", snap({"a": 0.5, "b": 0.4}), HOLD, False, False, False, "900 ms > 0.8"),
        (
            "parallel-steps-max-not-sum",
            snap({"a": 0.5, "b": 0.4}, chain=False),
            HOLD,
            False,
            False,
            True,
            "500",
        ),
        ("scaling-up", snap({"a": 0.1, "b": 0.1}), UP, False, False, False, "scaling up step/a"),
        ("metrics-unavailable", snap({"a": 0.1}), HOLD, True, False, False, "metrics unavailable"),
        ("unknown-is-no-headroom", snap({"a": 0.1, "b": None}), HOLD, False, False, False, "no p95 measured"),
        ("unknown-assumed", snap({"a": None}), HOLD, False, True, True, "assumed"),
        ("assume-does-not-override-a-measured-breach", snap({"a": 0.9}), HOLD, False, True, False, "> 0.8"),
    ],
)
def test_headroom(
    case: str,
    s: WorkflowSnapshot,
    decisions: list[Decision],
    unavailable: bool,
    assume: bool,
    ok: bool,
    says: str,
) -> None:
    got, why = R.headroom(s, decisions, unavailable, 0.8, assume)
    assert got is ok, why
    assert says in why, why
