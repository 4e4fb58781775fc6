"""The resource controller's hands: carry out :class:`Decision`s through the ``scale`` subresource.

- One owner per replica count: only a part whose replicas the controller owns
  (``Scaling.controller_owns_replicas``: modes queue and slo) is ever written. A decision for a part in mode
  fixed (the operator's reconcile owns its replicas) or hpa (the HorizontalPodAutoscaler does) is refused,
  as is a count outside the spec's bounds.
- Writes carry their own field manager, ``agentscale-resource-controller``, so ``managedFields`` say who set
  the replicas (the operator applies with ``agentscale``; an HPA writes as ``kube-controller-manager``).
- Each change gets an Event on the workflow (reason ``Scaled``, message ``<target>: <the decision's
  reason>``), the workflow's ``status.lastScalingDecision`` and the part's entry of ``status.scaling``
  (desired replicas, rule, reason), in one merge patch of those two keys alone: the workflow controller's
  ``status.status_patch`` never writes them, so the two status writers do not clobber each other. Entries of
  parts that left the spec (or the controlled modes) are removed in the same patch, or in one of their own.
- The workflow's ``MetricsUnavailable`` condition (:meth:`Actuator.set_condition`): server-side apply of that
  one entry of ``status.conditions`` (a list keyed by type) under the same field manager, so the workflow
  controller's conditions are never touched; a Warning Event when it turns True, a Normal one when it turns
  False again.
- A decision that did not change the count writes nothing.
- Before every scale the caller's ``may_write`` is asked (the loop passes "still the leader"); once it says
  no, nothing more is written.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentscale.api.models import API_VERSION, KIND, Condition, PartScaling, Scaling, ScalingDecision
from agentscale.kube import ApiError
from agentscale.resource_controller.snapshot import Decision

log = logging.getLogger("agentscale.resource_controller.actuator")

FIELD_MANAGER = "agentscale-resource-controller"
EVENT_REASON = "Scaled"


class ScaleApi(Protocol):
    """What the actuator needs of the API server (``kube.KubeClient`` has it)."""

    async def scale(
        self, namespace: str, name: str, replicas: int, field_manager: str | None = None
    ) -> None: ...
    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str, component: str = ...
    ) -> None: ...
    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Any
    ) -> None: ...
    async def apply_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Any, field_manager: str
    ) -> None: ...


@dataclass(frozen=True)
class WorkflowRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Target:
    """Where one part's replicas live, and the spec's rule for who owns them."""

    deployment: str
    scaling: Scaling


@dataclass(frozen=True)
class Write:
    decision: Decision
    deployment: str


def plan_writes(
    decisions: Sequence[Decision], targets: Mapping[str, Target]
) -> tuple[list[Write], list[str]]:
    """The scale writes to make (changed decisions for controller-owned parts, within bounds) and why the
    others were refused. Pure."""
    writes: list[Write] = []
    refused: list[str] = []
    for d in decisions:
        if not d.changed:
            continue
        t = targets.get(d.target)
        if t is None:
            refused.append(f"{d.target}: no Deployment")
        elif not t.scaling.controller_owns_replicas():
            refused.append(
                f"{d.target}: mode {t.scaling.mode}: its replicas are not the controller's to write"
            )
        elif t.scaling.clamp(d.to_replicas) != d.to_replicas:
            refused.append(f"{d.target}: {d.to_replicas} is outside {list(t.scaling.bounds())}")
        else:
            writes.append(Write(d, t.deployment))
    return writes, refused


def scaling_decision(d: Decision, at: dt.datetime) -> dict[str, Any]:
    """``status.lastScalingDecision`` for one decision, through the API model (keys the CRD knows)."""
    return ScalingDecision(
        time=at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        target=d.target,
        fromReplicas=d.from_replicas,
        toReplicas=d.to_replicas,
        reason=d.reason,
    ).model_dump(mode="json")


def part_scaling(d: Decision, at: dt.datetime) -> dict[str, Any]:
    """One entry of ``status.scaling``, through the API model."""
    return PartScaling(
        time=at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        fromReplicas=d.from_replicas,
        desired=d.to_replicas,
        rule=str(d.rule),
        reason=d.reason,
    ).model_dump(mode="json")


@dataclass
class Applied:
    scaled: list[Decision] = field(default_factory=list)
    failed: list[tuple[Decision, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def unchanged(self) -> set[str]:
        """Targets whose replicas this round meant to change and did not (the loop keeps their old state)."""
        return {d.target for d, _ in self.failed}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Actuator:
    def __init__(
        self,
        client: ScaleApi,
        field_manager: str = FIELD_MANAGER,
        may_write: Callable[[], bool] = lambda: True,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.client = client
        self.field_manager = field_manager
        self.may_write = may_write
        self.clock = clock

    async def apply(
        self,
        wf: WorkflowRef,
        decisions: Sequence[Decision],
        targets: Mapping[str, Target],
        recorded: Collection[str] = (),
    ) -> Applied:
        """Scale what changed. ``recorded``: the parts ``status.scaling`` holds now (entries of parts that
        are no longer ``targets`` controlled by this controller are removed)."""
        writes, refused = plan_writes(decisions, targets)
        out = Applied(refused=refused)
        for r in refused:
            if not r.endswith("no Deployment"):
                log.error("%s/%s: refused to scale %s", wf.namespace, wf.name, r)
        for w in writes:
            d = w.decision
            if not self.may_write():
                out.failed.append((d, "not the leader"))
                continue
            try:
                await self.client.scale(
                    wf.namespace, w.deployment, d.to_replicas, field_manager=self.field_manager
                )
            except Exception as exc:  # API or connection trouble: the next cycle decides again
                log.warning("%s/%s: scaling %s failed: %s", wf.namespace, wf.name, w.deployment, exc)
                out.failed.append((d, str(exc)))
                continue
            out.scaled.append(d)
            await self._event(wf, d)
        gone = sorted(
            k for k in recorded if k not in targets or not targets[k].scaling.controller_owns_replicas()
        )
        if (out.scaled or gone) and self.may_write():
            await self._status(wf, out.scaled, gone)
        return out

    async def set_condition(self, wf: WorkflowRef, cond: Condition, was: str | None) -> bool:
        """Write one condition of the controller's (``was``: its status before, None if absent); True when
        written. Announced when it turns True (a Warning) and when it turns False from True (Normal)."""
        if not self.may_write():
            return False
        status = {"conditions": [cond.model_dump(mode="json")]}
        try:
            await self.client.apply_status(
                API_VERSION, KIND, wf.namespace, wf.name, status, field_manager=self.field_manager
            )
        except Exception as exc:  # the next cycle compares again and retries
            if not (isinstance(exc, ApiError) and exc.status == 404):
                log.warning("%s/%s: could not write %s: %s", wf.namespace, wf.name, cond.type, exc)
            return False
        if cond.status != was and (cond.status == "True" or was == "True"):
            kind = "Warning" if cond.status == "True" else "Normal"
            await self._post(wf, kind, cond.type if cond.status == "True" else cond.reason, cond.message)
        return True

    async def _event(self, wf: WorkflowRef, d: Decision) -> None:
        await self._post(wf, "Normal", EVENT_REASON, f"{d.target}: {d.reason}")

    async def _post(self, wf: WorkflowRef, type_: str, reason: str, message: str) -> None:
        involved = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": wf.name,
            "namespace": wf.namespace,
            "uid": wf.uid,
        }
        try:
            await self.client.post_event(involved, type_, reason, message, component=self.field_manager)
        except Exception as exc:  # what happened stands; a lost Event must not undo the bookkeeping
            log.warning("%s/%s: could not record %s event: %s", wf.namespace, wf.name, reason, exc)

    async def _status(self, wf: WorkflowRef, scaled: Sequence[Decision], gone: Sequence[str]) -> None:
        at = self.clock()
        parts: dict[str, Any] = dict.fromkeys(gone)
        parts.update({d.target: part_scaling(d, at) for d in scaled})
        status: dict[str, Any] = {"scaling": parts}
        if scaled:
            status["lastScalingDecision"] = scaling_decision(scaled[-1], at)
        try:
            await self.client.patch_status(API_VERSION, KIND, wf.namespace, wf.name, status)
        except ApiError as exc:
            if exc.status != 404:  # 404: the workflow is gone
                log.warning("%s/%s: could not write lastScalingDecision: %s", wf.namespace, wf.name, exc)
        except Exception as exc:
            log.warning("%s/%s: could not write lastScalingDecision: %s", wf.namespace, wf.name, exc)
