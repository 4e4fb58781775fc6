"""Right-sizing, the hands: read the pods of parts with ``rightsizing.enabled``, resize them in place.

A round, every ``rightsize_interval_s`` within the leader's cycle (nothing at all while no part has it on):

1. The parts with ``rightsizing.enabled`` from the cluster cache; one LIST of the workflows' pods
   (``kinds.OWNED_SELECTOR``), mapped to their parts by their labels.
2. One read of their usage (``rightsize_signals``: per pod, one query per measure and source for every pod at
   once). When Prometheus does not answer every query, the round does nothing (fail static) and counts
   ``agentscale_rc_rightsize_errors_total{kind="all"}``.
3. Per part, ``rightsize.plan_part`` with the recommendation in force (the workflow's
   ``status.rightsizing[<part>]``: durable, so a new leader keeps the once-per-window rule).
4. Each resize through the pod's ``resize`` subresource (``kube.KubeClient.resize``, field manager
   ``agentscale-resource-controller``), only ``cpu``/``memory`` requests of the main container; then
   ``status.rightsizing[<part>]`` (a merge patch of that key alone) and a ``Rightsized`` Event when the
   recommendation changed (a ``RightsizeFailed`` Warning when a resize failed). Entries of parts that no
   longer have it on are dropped from ``status.rightsizing``.

The pod template is not written: a template change rolls the Deployment, replacing the very pods just
resized in place (docs/tuning.md, Right-sizing, says what that trades). New pods start with the spec's
requests and are resized in the next round.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentscale import kinds
from agentscale.api.models import API_VERSION, KIND, Requests, Rightsizing, RightsizingStatus, parse_quantity
from agentscale.cache import ClusterCache, Key
from agentscale.kube import ApiError, KubeClient
from agentscale.render import labels as L
from agentscale.render.triton import TRITON_CONTAINER
from agentscale.render.workers import WORKER_CONTAINER
from agentscale.resource_controller import metrics as M
from agentscale.resource_controller import rightsize as R
from agentscale.resource_controller.actuator import FIELD_MANAGER
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.rightsize_signals import Group, UsageReading, read_usage
from agentscale.resource_controller.signals import PrometheusReader

log = logging.getLogger("agentscale.resource_controller.rightsize")

EVENT_REASON = "Rightsized"
FAILED_REASON = "RightsizeFailed"
MAIN_CONTAINER = {L.STEP: WORKER_CONTAINER, L.MODEL: TRITON_CONTAINER}
_PART_LABEL = {L.STEP: L.STEP_LABEL, L.MODEL: L.MODEL_LABEL}
RESIZING = ("PodResizePending", "PodResizeInProgress")
"""Pod conditions (Kubernetes 1.33+) while the kubelet has not finished a resize."""


@dataclass(frozen=True)
class EnabledPart:
    workflow: Key
    uid: str
    component: str
    name: str
    settings: Rightsizing

    @property
    def key(self) -> str:
        return f"{self.component}/{self.name}"

    @property
    def group(self) -> Group:
        return Group(self.settings.windowSeconds, self.settings.percentile)


def stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> float | None:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except (TypeError, ValueError):
        return None


def in_force(entry: Mapping[str, Any] | None) -> R.Recommendation | None:
    """The recommendation a ``status.rightsizing`` entry records, or None."""
    if not isinstance(entry, Mapping):
        return None
    rec = entry.get("recommended") or {}
    cpu, memory = parse_quantity(rec.get("cpu") or ""), parse_quantity(rec.get("memory") or "")
    since = parse_stamp(str(entry.get("time") or ""))
    if cpu is None or memory is None or since is None:
        return None
    return R.Recommendation(float(cpu), float(memory), since, reason=str(entry.get("reason") or ""))


def part_of(meta: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(workflow, component, part) of one of our step or model pods, else None."""
    labels = meta.get("labels") or {}
    component = labels.get(L.COMPONENT_LABEL, "")
    if labels.get("app.kubernetes.io/managed-by") != L.MANAGED_BY or component not in _PART_LABEL:
        return None
    workflow, part = labels.get(L.WORKFLOW_LABEL, ""), labels.get(_PART_LABEL[component], "")
    return (workflow, component, part) if workflow and part else None


def pod_view(
    obj: Mapping[str, Any], component: str, usage: UsageReading | None, group: Group
) -> R.PodView | None:
    """A running pod's main container as the policy sees it; None when it is not running or is going."""
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if st.get("phase") != "Running" or meta.get("deletionTimestamp"):
        return None
    name = MAIN_CONTAINER[component]
    container = next((c for c in spec.get("containers") or [] if c.get("name") == name), None)
    if container is None:
        return None
    res = container.get("resources") or {}
    resizing = any(
        c.get("type") in RESIZING and c.get("status") == "True" for c in st.get("conditions") or []
    )
    ns, pod = str(meta.get("namespace", "")), str(meta.get("name", ""))
    return R.PodView(
        name=pod,
        uid=str(meta.get("uid", "")),
        container=name,
        requests=R.quantities(res.get("requests")),
        limits=R.quantities(res.get("limits")),
        usage=usage.usage(group, ns, pod, name) if usage is not None else None,
        resizing=resizing,
    )


def status_entry(plan: R.PartPlan, live: Mapping[str, Any] | None, resized: int) -> dict[str, Any]:
    """``status.rightsizing[<part>]`` after a round."""
    rec = plan.recommendation
    if rec is None:
        return RightsizingStatus(reason=plan.note).model_dump(mode="json")
    before = RightsizingStatus.model_validate(live or {}, extra="ignore") if live else RightsizingStatus()
    if plan.changed:
        observed = Requests(
            cpu=R.cpu_text(rec.observed_cpu or 0), memory=R.memory_text(rec.observed_memory or 0)
        )
        count = resized
    else:
        observed, count = before.observed, before.resizedPods + resized
    return RightsizingStatus(
        time=stamp(rec.since),
        observed=observed,
        recommended=Requests(cpu=R.cpu_text(rec.cpu), memory=R.memory_text(rec.memory)),
        resizedPods=count,
        reason=rec.reason or before.reason,
    ).model_dump(mode="json")


class Rightsizer:
    """One per resource controller; :meth:`cycle` when :meth:`due`."""

    def __init__(
        self,
        client: KubeClient,
        cache: ClusterCache,
        reader: PrometheusReader | None,
        config: PolicyConfig,
        metrics: M.ControllerMetrics,
        may_write: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.cache = cache
        self.reader = reader
        self.config = config
        self.metrics = metrics
        self.may_write = may_write
        self.clock = clock
        self.last_round: float | None = None
        self.resized: dict[str, float] = {}
        """Pod uid -> wall time of its last resize by this process (once per pod per window)."""
        self._said = ""

    def due(self, monotonic_now: float) -> bool:
        return self.last_round is None or monotonic_now - self.last_round >= self.config.rightsize_interval_s

    def reset(self) -> None:
        """A new term: the next round is due at once (status holds the durable part)."""
        self.last_round = None

    def enabled_parts(self) -> list[EnabledPart]:
        out = []
        for key in self.cache.workflow_keys():
            record = self.cache.workflow_record(key)
            if record is None or record["deleting"]:
                continue
            wf = self.cache.parsed(key, record).workflow
            if wf is None:
                continue
            uid = str(record["uid"])
            for component, parts in ((L.STEP, wf.spec.steps), (L.MODEL, wf.spec.models)):
                for p in parts:
                    if p.rightsizing.enabled:
                        out.append(EnabledPart(key, uid, component, p.name, p.rightsizing))
        return out

    def _say(self, text: str, level: int = logging.INFO) -> None:
        if text != self._said:
            log.log(level, "%s", text)
            self._said = text

    async def cycle(self, monotonic_now: float) -> list[R.PartPlan]:
        """One round (see the module); the plans made."""
        self.last_round = monotonic_now
        parts = self.enabled_parts()
        if not self.may_write():
            return []
        await self._forget_disabled(parts)
        if not parts:
            return []
        if self.reader is None:
            self._say("right-sizing: no Prometheus (AGENTSCALE_PROMETHEUS_URL unset): nothing resized")
            return []
        groups: dict[Group, set[str]] = {}
        for p in parts:
            groups.setdefault(p.group, set()).add(p.workflow[0])
        usage = await read_usage(self.reader, groups)
        if usage.error is not None:
            self.metrics.rightsize_errors.labels("all", usage.error.kind.value).inc()
            self._say(
                f"right-sizing: Prometheus did not answer ({usage.error}): nothing resized", logging.WARNING
            )
            return []
        pods = await self.client.list(
            kinds.POD.api_version, kinds.POD.kind, labelSelector=kinds.OWNED_SELECTOR
        )
        by_part: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
        for obj in pods:
            meta = obj.get("metadata") or {}
            owner = part_of(meta)
            if owner is not None:
                by_part.setdefault((str(meta.get("namespace", "")), *owner), []).append(obj)
        now = self.clock()
        self.resized = {u: t for u, t in self.resized.items() if now - t < 7 * 24 * 3600}
        plans = []
        for p in parts:
            objs = by_part.get((p.workflow[0], p.workflow[1], p.component, p.name), [])
            views = [v for o in objs if (v := pod_view(o, p.component, usage, p.group)) is not None]
            plans.append(await self._part(p, views, now))
        return plans

    async def _forget_disabled(self, parts: Sequence[EnabledPart]) -> None:
        """Drop ``status.rightsizing`` entries of parts that no longer have it on (or no longer exist)."""
        enabled: dict[Key, set[str]] = {}
        for p in parts:
            enabled.setdefault(p.workflow, set()).add(p.key)
        for key in self.cache.workflow_keys():
            record = self.cache.workflow_record(key)
            live = ((record or {}).get("status") or {}).get("rightsizing")
            if record is None or record["deleting"] or not isinstance(live, Mapping):
                continue
            stale = set(live) - enabled.get(key, set())
            if stale:
                try:
                    await self.client.patch_status(
                        API_VERSION, KIND, key[0], key[1], {"rightsizing": {k: None for k in sorted(stale)}}
                    )
                except Exception as exc:  # the next round tries again
                    log.warning("%s/%s: could not clear status.rightsizing: %s", *key, exc)

    async def _part(self, p: EnabledPart, pods: Sequence[R.PodView], now: float) -> R.PartPlan:
        record = self.cache.workflow_record(p.workflow)
        live = ((record or {}).get("status") or {}).get("rightsizing") or {}
        live_entry = live.get(p.key) if isinstance(live, Mapping) else None
        window = p.settings.windowSeconds
        recently = {u for u, t in self.resized.items() if now - t < window}
        plan = R.plan_part(
            p.key,
            p.settings,
            pods,
            in_force(live_entry),
            now,
            self.config.rightsize_threshold,
            self.config.rightsize_min_coverage,
            recently,
        )
        done, failed = await self._resize(p, plan.resizes, now)
        entry = status_entry(plan, live_entry, done)
        if entry != live_entry and self.may_write():
            await self._status(p, entry)
        if plan.changed:
            msg = f"{p.key}: {plan.recommendation.reason if plan.recommendation else ''}"
            msg += f"; resized {done} of {len(pods)} running pods in place"
            log.info("%s/%s %s", *p.workflow, msg)
            await self._event(p, "Normal", EVENT_REASON, msg)
        if failed:
            await self._event(p, "Warning", FAILED_REASON, f"{p.key}: {'; '.join(failed)}")
        return plan

    async def _resize(self, p: EnabledPart, resizes: Sequence[R.Resize], now: float) -> tuple[int, list[str]]:
        done, failed = 0, []
        for r in resizes:
            assert set(r.requests) <= set(R.RESOURCES)  # never a GPU, MIG or any other resource
            if not self.may_write():
                break
            try:
                await self.client.resize(p.workflow[0], r.pod, r.container, r.requests, FIELD_MANAGER)
            except ApiError as exc:
                if exc.status == 404:  # the pod went meanwhile
                    continue
                self.metrics.rightsize_errors.labels(p.component, str(exc.status)).inc()
                failed.append(f"resizing {r.pod} to {r.requests} failed: {exc.message or exc}")
                continue
            except Exception as exc:  # connection trouble: the next round tries again
                self.metrics.rightsize_errors.labels(p.component, "Unreachable").inc()
                failed.append(f"resizing {r.pod} failed: {exc}")
                continue
            done += 1
            self.resized[r.uid] = now
            for resource in r.requests:
                self.metrics.rightsize_resizes.labels(p.component, resource).inc()
            extra = f" ({r.note})" if r.note else ""
            log.info("%s/%s %s: resized %s in place to %s%s", *p.workflow, p.key, r.pod, r.requests, extra)
        for f in failed:
            log.warning("%s/%s %s: %s", *p.workflow, p.key, f)
        return done, failed

    async def _status(self, p: EnabledPart, entry: dict[str, Any]) -> None:
        try:
            await self.client.patch_status(
                API_VERSION, KIND, p.workflow[0], p.workflow[1], {"rightsizing": {p.key: entry}}
            )
        except Exception as exc:  # the next round compares again and retries
            if not (isinstance(exc, ApiError) and exc.status == 404):
                log.warning("%s/%s: could not write status.rightsizing: %s", *p.workflow, exc)

    async def _event(self, p: EnabledPart, type_: str, reason: str, message: str) -> None:
        if not self.may_write():
            return
        involved = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": p.workflow[1],
            "namespace": p.workflow[0],
            "uid": p.uid,
        }
        try:
            await self.client.post_event(involved, type_, reason, message, component=FIELD_MANAGER)
        except Exception as exc:  # what happened stands
            log.warning("%s/%s: could not record %s event: %s", *p.workflow, reason, exc)
