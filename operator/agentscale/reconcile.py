"""Desired versus existing children: a pure plan, then a thin executor that applies it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentscale import kinds
from agentscale.api.models import AgentWorkflow
from agentscale.kube import ApiError, KubeClient
from agentscale.render import ChildKey, child_key
from agentscale.render import labels as L


@dataclass(frozen=True)
class ExistingChild:
    kind: str
    name: str
    spec_hash: str
    replicas: int | None = None  # Deployments only


@dataclass
class Plan:
    apply: list[dict[str, Any]] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)  # "Kind/name: field, ..." re-applied to undo edits
    prune: list[ExistingChild] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.apply or self.prune)


def plan_children(
    wf: AgentWorkflow,
    desired: Iterable[dict[str, Any]],
    existing: Mapping[ChildKey, ExistingChild],
    drifted: Mapping[ChildKey, list[str]] | None = None,
) -> Plan:
    """Apply what is missing, differs (by spec hash) or drifted (hand edits of fields we own), and prune what
    the spec no longer names. Replicas are not the plan's business: in mode fixed the rendered Deployment
    carries them, in mode hpa the HPA owns them, in modes queue and slo the resource controller does
    (``resource_controller/loop.py``, which also keeps them within the spec's bounds)."""
    plan = Plan()
    drifted = drifted or {}
    wanted: set[ChildKey] = set()
    for obj in desired:
        key = child_key(obj)
        wanted.add(key)
        have = existing.get(key)
        if have is None or have.spec_hash != obj["metadata"]["annotations"][L.HASH_ANNOTATION]:
            plan.apply.append(obj)
        elif key in drifted:
            plan.apply.append(obj)
            plan.drifted.append(f"{key[0]}/{key[1]}: {', '.join(drifted[key])}")
    plan.prune = sorted((c for k, c in existing.items() if k not in wanted), key=lambda c: (c.kind, c.name))
    return plan


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # permanent API errors (invalid objects)


async def execute(client: KubeClient, namespace: str, plan: Plan, concurrency: int = 8) -> Outcome:
    """Carry out a plan. Transient errors raise (the caller retries); rejections are collected."""
    out = Outcome()
    gate = asyncio.Semaphore(concurrency)

    async def apply(obj: dict[str, Any]) -> None:
        async with gate:
            try:
                await client.apply(obj)
                out.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
            except ApiError as exc:
                if not exc.permanent:
                    raise
                out.rejected.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")

    async def prune(child: ExistingChild) -> None:
        async with gate:
            await client.delete(kinds.owned(child.kind).api_version, child.kind, namespace, child.name)
            out.pruned.append(f"{child.kind}/{child.name}")

    # ConfigMaps and Services first, so servers never start without their config.
    first = [o for o in plan.apply if kinds.owned(o["kind"]).apply_first]
    rest = [o for o in plan.apply if not kinds.owned(o["kind"]).apply_first]
    await asyncio.gather(*(apply(o) for o in first))
    await asyncio.gather(
        *(apply(o) for o in rest),
        *(prune(c) for c in plan.prune),
    )
    return out
