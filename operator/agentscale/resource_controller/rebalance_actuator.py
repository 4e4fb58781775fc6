"""GPU rebalancing, the hands: read the cluster into ``rebalance``'s plain values, carry out its plan.

Each resource-controller cycle, after ``decide``: when some workflow has a pod the scheduler could not place
for lack of GPUs (the cluster cache's pending pods; otherwise the cycle costs nothing), the rebalancer lists
nodes, pods and the workflows' PodDisruptionBudgets once, asks :func:`rebalance.plan` for the fewest
evictions that free one node for the oldest such pod, and carries out one move per cycle:

1. It waits while a pod on the target node is still terminating (the last move is not done: the scheduler
   counts that pod's GPUs until it is gone). So there is at most one eviction in flight per node.
2. It nominates the pending pod to the target node (``status.nominatedNodeName``, what the scheduler's own
   preemption writes): the scheduler then keeps that room for it, so an evicted pod's replacement is placed
   elsewhere rather than back into the space being freed. The scheduler clears a nomination it cannot use.
3. It evicts the first pod of the plan through the Eviction API (``pods/eviction``). The API server refuses
   with 429 while the pod's PodDisruptionBudget allows no disruption; the rebalancer then waits for its next
   cycle (the plan is made again from fresh reads: level-triggered, nothing is remembered between cycles).
4. It posts a ``Rebalanced`` Event on the evicted pod's workflow with the plan in one line.

A pending pod for which ``2 x max_moves`` evictions have been made and that is still pending gets no more
(its replacements keep taking the room: something the planner does not model); it is forgotten, and may be
planned for again, once it is no longer pending. Measured on the kwok pool (e2e/tests/test_rebalance.py):
with the nomination, one eviction placed the 4-GPU pod in each of 4 runs; without it, the replacement went
back onto the freed node and took 2, 6 and 11 evictions in 3 runs.

Surge, then drain: a pod is moved only while its part has a ready replica more than its minimum
(``min_ready``: the spec's lower bound, at least 1), so the part stays at or above its minimum while the
ReplicaSet's replacement starts elsewhere. The rebalancer does not raise replicas itself to make that extra
replica: GPU Deployments roll with ``maxSurge: 0`` (a surge pod would wait for the very GPUs being freed),
and each part's replica count has one owner (the spec, the HPA or the scaling policy), which a rebalancer
scaling up and down would fight. A part at its minimum is left alone until the policy scales it up.

Settings (``RebalanceSettings.from_env``; docs/tuning.md): AGENTSCALE_RC_REBALANCE (1),
AGENTSCALE_RC_REBALANCE_MAX_MOVES (4), AGENTSCALE_RC_REBALANCE_HEADROOM (``signals``; ``assume`` treats a
workflow without measured latency as having headroom), AGENTSCALE_RC_REBALANCE_HEADROOM_FRACTION (0.8).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentscale import kinds
from agentscale.api.models import API_VERSION, KIND
from agentscale.cache import ClusterCache, Key
from agentscale.kube import ApiError, KubeClient
from agentscale.pending import pending_pod
from agentscale.render import labels as L
from agentscale.resource_controller import rebalance as R
from agentscale.resource_controller.signals import MetricsHealth
from agentscale.resource_controller.snapshot import Decision, WorkflowSnapshot

log = logging.getLogger("agentscale.resource_controller.rebalance")

EVENT_REASON = "Rebalanced"
_PARTS = {L.STEP: L.STEP_LABEL, L.MODEL: L.MODEL_LABEL}


@dataclass(frozen=True)
class RebalanceSettings:
    enabled: bool = True
    max_moves: int = 4
    assume_headroom: bool = False
    """``AGENTSCALE_RC_REBALANCE_HEADROOM=assume``: a workflow without measured latency has headroom."""
    headroom_fraction: float = 0.8
    """Headroom: the measured critical-path p95 is at most this fraction of the workflow's target."""

    def __post_init__(self) -> None:
        if self.max_moves < 1:
            raise ValueError("AGENTSCALE_RC_REBALANCE_MAX_MOVES must be >= 1")
        if not 0 < self.headroom_fraction <= 1:
            raise ValueError("AGENTSCALE_RC_REBALANCE_HEADROOM_FRACTION must be in (0, 1], e.g. 0.8")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RebalanceSettings:
        mode = env.get("AGENTSCALE_RC_REBALANCE_HEADROOM", "signals").strip() or "signals"
        if mode not in ("signals", "assume"):
            raise ValueError(
                f"AGENTSCALE_RC_REBALANCE_HEADROOM={mode!r}: use signals (headroom from measured p95, the "
                "default) or assume (a workflow without measured latency counts as having headroom)"
            )
        return cls(
            enabled=env.get("AGENTSCALE_RC_REBALANCE", "1") not in ("0", "false", "no"),
            max_moves=int(env.get("AGENTSCALE_RC_REBALANCE_MAX_MOVES") or cls.max_moves),
            assume_headroom=mode == "assume",
            headroom_fraction=float(
                env.get("AGENTSCALE_RC_REBALANCE_HEADROOM_FRACTION") or cls.headroom_fraction
            ),
        )


# ------------------------------------------------------------------ API objects -> plain values (pure)


def node_of(obj: Mapping[str, Any]) -> R.Node:
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    alloc = {}
    for r, v in (st.get("allocatable") or {}).items():
        try:
            alloc[r] = R.quantity(r, v)
        except ValueError:
            continue
    taints = tuple(
        R.Taint(str(t.get("key", "")), str(t.get("value", "")), str(t.get("effect", "")))
        for t in spec.get("taints") or []
    )
    return R.Node(
        str(meta.get("name", "")),
        alloc,
        dict(meta.get("labels") or {}),
        taints,
        bool(spec.get("unschedulable")),
    )


def placement_of(spec: Mapping[str, Any]) -> R.Placement:
    tolerations = tuple(
        R.Toleration(
            str(t.get("key") or ""),
            str(t.get("operator") or "Equal"),
            str(t.get("value") or ""),
            str(t.get("effect") or ""),
        )
        for t in spec.get("tolerations") or []
    )
    return R.Placement(dict(spec.get("nodeSelector") or {}), tolerations)


def requests_of(spec: Mapping[str, Any]) -> dict[str, int]:
    """What the scheduler counts for a pod: the sum over its containers, the max with each init container
    (GPU requests default to their limits); a value that is not a quantity counts 0."""

    def one(c: Mapping[str, Any]) -> dict[str, int]:
        res = c.get("resources") or {}
        merged = {
            **{k: v for k, v in (res.get("limits") or {}).items() if R.is_gpu(k)},
            **(res.get("requests") or {}),
        }
        out = {}
        for r, v in merged.items():
            try:
                out[r] = R.quantity(r, v)
            except ValueError:
                continue
        return out

    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        for r, q in one(c).items():
            total[r] = total.get(r, 0) + q
    for c in spec.get("initContainers") or []:
        for r, q in one(c).items():
            total[r] = max(total.get(r, 0), q)
    return total


def owner_of(meta: Mapping[str, Any]) -> R.PartRef | None:
    """The workflow step or model whose Deployment (through its ReplicaSet) made the pod, else None."""
    labels = meta.get("labels") or {}
    component = labels.get(L.COMPONENT_LABEL, "")
    if labels.get("app.kubernetes.io/managed-by") != L.MANAGED_BY or component not in _PARTS:
        return None
    workflow, part = labels.get(L.WORKFLOW_LABEL, ""), labels.get(_PARTS[component], "")
    by_rs = any(
        o.get("kind") == "ReplicaSet" and o.get("controller") for o in meta.get("ownerReferences") or []
    )
    if not (workflow and part and by_rs):
        return None
    return R.PartRef(str(meta.get("namespace", "")), workflow, component, part)


def pod_of(obj: Mapping[str, Any]) -> R.Pod:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    return R.Pod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        requests=requests_of(spec),
        placement=placement_of(spec),
        node=str(spec.get("nodeName") or ""),
        owner=owner_of(meta),
        terminating=bool(meta.get("deletionTimestamp")),
        node_affinity=affinity is not None,
    )


def live(obj: Mapping[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def gpu_short(objs: Iterable[Mapping[str, Any]]) -> list[R.Pod]:
    """Workflow pods the scheduler passed over for lack of GPUs, oldest first."""
    out = []
    for obj in sorted(
        objs,
        key=lambda o: (
            (o.get("metadata") or {}).get("creationTimestamp") or "",
            (o.get("metadata") or {}).get("name") or "",
        ),
    ):
        p = pending_pod(obj)
        if p is not None and p.short_of_gpus:
            pod = pod_of(obj)
            if pod.owner is not None:
                out.append(pod)
    return out


def disruptions_allowed(pdbs: Iterable[Mapping[str, Any]]) -> dict[R.PartRef, int]:
    """Part -> its PodDisruptionBudget's ``status.disruptionsAllowed`` (0 while the status is older than the
    spec: the disruption controller has not counted yet)."""
    out: dict[R.PartRef, int] = {}
    for obj in pdbs:
        meta, st = obj.get("metadata") or {}, obj.get("status") or {}
        labels = meta.get("labels") or {}
        component = labels.get(L.COMPONENT_LABEL, "")
        if component not in _PARTS:
            continue
        ref = R.PartRef(
            str(meta.get("namespace", "")),
            labels.get(L.WORKFLOW_LABEL, ""),
            component,
            labels.get(_PARTS[component], ""),
        )
        fresh = st.get("observedGeneration", -1) >= meta.get("generation", 0)
        out[ref] = int(st.get("disruptionsAllowed") or 0) if fresh else 0
    return out


# ------------------------------------------------------------------ the hands


class Rebalancer:
    """One per resource controller. :meth:`observe` each workflow's cycle, then :meth:`cycle` once."""

    def __init__(
        self,
        client: KubeClient,
        cache: ClusterCache,
        settings: RebalanceSettings | None = None,
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self.client = client
        self.cache = cache
        self.settings = settings or RebalanceSettings()
        self.may_write = may_write
        self.headroom: dict[Key, tuple[bool, str]] = {}
        self.last: str = ""
        """The last plan or refusal logged (logged again only when it changes)."""
        self.evictions = 0
        self.moved_for: dict[str, int] = {}
        """Pending pod -> evictions made for it so far (forgotten once it is no longer pending)."""

    @property
    def limits(self) -> R.Limits:
        return R.Limits(max_moves=self.settings.max_moves)

    def observe(
        self, key: Key, snap: WorkflowSnapshot, decisions: Sequence[Decision], health: MetricsHealth | None
    ) -> None:
        """Remember whether the workflow has SLO headroom after this cycle's decisions."""
        unavailable = health is not None and health.unavailable
        s = self.settings
        self.headroom[key] = R.headroom(snap, decisions, unavailable, s.headroom_fraction, s.assume_headroom)

    def allowances(self, pdbs: Mapping[R.PartRef, int]) -> dict[R.PartRef, R.Allowance]:
        """What each workflow part may lose, from the cache (ready replicas, the spec's lower bound)."""
        out: dict[R.PartRef, R.Allowance] = {}
        for key in self.cache.workflow_keys():
            record = self.cache.workflow_record(key)
            wf = self.cache.parsed(key, record).workflow if record is not None else None
            if wf is None:
                continue
            room, why = self.headroom.get(key, (False, "not measured yet this term"))
            bounds = {(L.STEP, s.name): s.scaling for s in wf.spec.steps}
            bounds.update({(L.MODEL, m.name): m.scaling for m in wf.spec.models})
            for d in self.cache.deployments(key):
                scaling = bounds.get((d.component, d.part))
                if scaling is None:
                    continue
                ref = R.PartRef(key[0], key[1], d.component, d.part)
                min_ready = max(1, scaling.bounds()[0])
                out[ref] = R.Allowance(d.ready, min_ready, pdbs.get(ref), room, why)
        return out

    def _any_short(self) -> bool:
        return any(p.short_of_gpus for key in self.cache.workflow_keys() for p in self.cache.pending(key))

    async def cycle(self) -> R.Plan | None:
        """Plan once and carry out at most one move; the plan acted on, or None."""
        if not self.settings.enabled or not self._any_short():
            self.last = ""
            return None
        nodes = [node_of(n) for n in await self.client.list(kinds.NODE.api_version, kinds.NODE.kind)]
        objs = [p for p in await self.client.list(kinds.POD.api_version, kinds.POD.kind) if live(p)]
        pdb = kinds.owned("PodDisruptionBudget")
        pdbs = await self.client.list(pdb.api_version, pdb.kind, labelSelector=kinds.OWNED_SELECTOR)
        bound = [pod_of(o) for o in objs if (o.get("spec") or {}).get("nodeName")]
        short = gpu_short(objs)
        self.moved_for = {k: n for k, n in self.moved_for.items() if k in {p.key for p in short}}
        cap = 2 * self.settings.max_moves
        spent = [
            R.Refusal(p, f"{cap} evictions made for it and it is still pending: no more")
            for p in short
            if self.moved_for.get(p.key, 0) >= cap
        ]
        short = [p for p in short if self.moved_for.get(p.key, 0) < cap]
        plan, refusals = R.plan(short, nodes, bound, self.allowances(disruptions_allowed(pdbs)), self.limits)
        refusals = spent + refusals
        if refusals:
            self._say("; ".join(f"not rebalancing for {r.pending.key}: {r.reason}" for r in refusals))
        if plan is None:
            return None
        busy = [p.key for p in bound if p.node == plan.node and p.terminating]
        if busy:
            self._say(f"rebalance: waiting for {', '.join(busy)} to leave {plan.node} ({plan.describe()})")
            return None
        if not self.may_write():
            return None
        move = plan.moves[0]
        try:
            await self.client.patch_status(
                "v1", "Pod", plan.pending.namespace, plan.pending.name, {"nominatedNodeName": plan.node}
            )
        except ApiError as exc:  # the pod was placed or deleted meanwhile: plan again next cycle
            log.info("rebalance: could not nominate %s to %s: %s", plan.pending.key, plan.node, exc)
            return None
        try:
            await self.client.evict(move.pod.namespace, move.pod.name)
        except ApiError as exc:
            if exc.status == 429:
                self._say(
                    f"rebalance: the API server refuses to evict {move.pod.key} now ({exc.message}); waiting"
                )
                return None
            raise
        self.evictions += 1
        self.moved_for[plan.pending.key] = self.moved_for.get(plan.pending.key, 0) + 1
        self.last = ""
        text = f"evicted {move.pod.key} (move 1 of {len(plan.moves)}): {plan.describe()}"
        log.info("rebalance: %s", text)
        await self._event(move.pod, text)
        return plan

    def _say(self, text: str) -> None:
        if text != self.last:
            log.info("%s", text)
            self.last = text

    async def _event(self, pod: R.Pod, text: str) -> None:
        owner = pod.owner
        assert owner is not None
        record = self.cache.workflow_record((owner.namespace, owner.workflow))
        involved = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": owner.workflow,
            "namespace": owner.namespace,
            "uid": str(record["uid"]) if record is not None else "",
        }
        try:
            await self.client.post_event(
                involved, "Normal", EVENT_REASON, text, component="agentscale-resource-controller"
            )
        except Exception as exc:  # the move stands; a lost Event must not fail the cycle
            log.warning("rebalance: could not record the %s event: %s", EVENT_REASON, exc)
