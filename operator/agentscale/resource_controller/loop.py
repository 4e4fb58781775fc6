"""The resource controller's loop: leader only, one cycle every period, over every workflow in the cache.

A cycle: one read of every signal for every workflow from Prometheus (``PrometheusReader``: one batched
query per signal, async), then per workflow in the shared :class:`~agentscale.cache.ClusterCache` (kopf's
indexes: no LIST per cycle): a :class:`WorkflowSnapshot` of its steps and models with the replicas their
Deployments carry now and the signals the reading has for them (:func:`signals_for`: a series belongs to
the part whose ``namespace``, ``workflow`` and ``step``/``model`` labels it carries), :func:`decide`, then
the :class:`Actuator` for what changed. A cycle that changes nothing writes nothing.

Fail static (:func:`assess`, :func:`hold_down`): when Prometheus does not answer every query, or answers
with no series for a queue- or slo-mode part whose replicas have been ready for a grace period
(``no_series_grace_s``), the affected parts keep their policy
state, never scale down (a move into the spec's [min, max] still happens), and the workflow's
``MetricsUnavailable`` condition turns True with the error; it turns False once reads recover, with nothing
to restart. The condition is compared with the live status each cycle and written only when it differs.

Without ``AGENTSCALE_PROMETHEUS_URL`` the controller reads nothing (said once in the log): every signal is
unknown and the policy only moves counts outside [min, max] into it (``Rule.Bounds``), the clamp the
workflow controller's reconcile used to do; no ``MetricsUnavailable`` is written.

Right-sizing (``rightsize_actuator``) runs in the first cycle after every ``rightsize_interval_s``, after GPU
rebalancing, and costs nothing while no part has ``rightsizing.enabled``.

Leadership: :class:`ResourceController` runs the cycles only while its :class:`LeaderElector` holds the
Lease; the actuator asks ``is_leader`` before each write. A new term starts with empty policy state (the
policy then refuses to scale down for one stabilization window: safe).

Settings come from the environment (``LoopSettings.from_env``; docs/tuning.md lists them):
AGENTSCALE_RC_ENABLED (1), AGENTSCALE_RC_CYCLE_SECONDS (15), AGENTSCALE_PROMETHEUS_URL (unset),
AGENTSCALE_RC_RECORDED_SIGNALS (0: send the queries; 1: read the recording rules' series),
AGENTSCALE_RC_NO_SERIES_GRACE_SECONDS (60), AGENTSCALE_RC_POD_STARTUP_SECONDS (30, the policy's
``startup_s``), AGENTSCALE_METRICS_PORT (9090), and the lease's
(``LeaseConfig.from_env``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agentscale.api.models import AgentWorkflow, Scaling
from agentscale.cache import ClusterCache, Key
from agentscale.kube import KubeClient
from agentscale.render import labels as L
from agentscale.resource_controller import metrics as M
from agentscale.resource_controller.actuator import Actuator, Applied, Target, WorkflowRef
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.decide import decide
from agentscale.resource_controller.leader import Clock, LeaderElector, LeaseConfig, SystemClock
from agentscale.resource_controller.rebalance_actuator import Rebalancer, RebalanceSettings
from agentscale.resource_controller.rightsize_actuator import Rightsizer
from agentscale.resource_controller.signals import MetricsHealth, PrometheusReader, Reading, assess
from agentscale.resource_controller.snapshot import Decision, Part, PartKind, Rule, Signals, WorkflowSnapshot
from agentscale.resource_controller.state import PartState
from agentscale.status import METRICS_UNAVAILABLE, metrics_condition

log = logging.getLogger("agentscale.resource_controller")

PROMETHEUS_URL_ENV = "AGENTSCALE_PROMETHEUS_URL"


def prometheus_url(env: Mapping[str, str] = os.environ) -> str | None:
    """``AGENTSCALE_PROMETHEUS_URL`` (``http://prometheus.monitoring:9090``), None when unset or empty."""
    url = env.get(PROMETHEUS_URL_ENV, "").strip()
    if not url:
        return None
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        raise ValueError(
            f"{PROMETHEUS_URL_ENV}={url!r}: set the Prometheus base URL, e.g. http://prometheus:9090 "
            "(or leave it unset: the resource controller then only clamps replicas into their bounds)"
        )
    return url


@dataclass(frozen=True)
class LoopSettings:
    enabled: bool = True
    cycle_s: float = 15.0
    """Seconds from the start of one cycle to the start of the next."""
    concurrency: int = 16
    """Workflows actuated at once within a cycle."""
    prometheus_url: str | None = None
    """Where signals are read; None: read nothing, only clamp into bounds."""
    recorded_signals: bool = False
    """Read the series the rules of ``agentscale prometheus-rules`` record (the chart's PrometheusRule)
    instead of sending the queries themselves: a cheap read at any number of workflows."""
    metrics_port: int = M.DEFAULT_PORT
    """The controller's own /metrics; 0: not served."""
    no_series_grace_s: float = 60.0
    """A part's replicas must have been ready this long before its having no series counts as
    MetricsUnavailable (new pods start, then are scraped one interval later)."""
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.cycle_s <= 0 or self.concurrency < 1:
            raise ValueError("resource controller: cycle seconds must be > 0 and concurrency >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LoopSettings:
        return cls(
            enabled=env.get("AGENTSCALE_RC_ENABLED", "1") not in ("0", "false", "no"),
            cycle_s=float(env.get("AGENTSCALE_RC_CYCLE_SECONDS") or cls.cycle_s),
            prometheus_url=prometheus_url(env),
            recorded_signals=env.get("AGENTSCALE_RC_RECORDED_SIGNALS", "0") in ("1", "true", "yes"),
            metrics_port=M.port_from_env(env),
            no_series_grace_s=float(
                env.get("AGENTSCALE_RC_NO_SERIES_GRACE_SECONDS") or cls.no_series_grace_s
            ),
            lease=LeaseConfig.from_env(env),
            policy=PolicyConfig.from_env(env),
        )


def slots_of(wf: AgentWorkflow) -> dict[str, int]:
    """What one replica of each part serves at once, by part key: a step's ``concurrency``, a model
    server's model instances (the sum over its ``instanceGroups``)."""
    out = {f"{PartKind.step}/{s.name}": s.concurrency for s in wf.spec.steps}
    out.update({f"{PartKind.model}/{m.name}": sum(g.count for g in m.instanceGroups) for m in wf.spec.models})
    return out


def signals_for(reading: Reading | None, wf: AgentWorkflow) -> dict[str, Signals]:
    """Each part's :class:`Signals` in ``reading`` by part key; a part without series is absent (unknown)."""
    if reading is None:
        return {}
    return reading.workflow(wf.namespace, wf.name, slots_of(wf))


def snapshot_of(
    wf: AgentWorkflow,
    replicas: Mapping[str, int],
    now: float,
    signals: Mapping[str, Signals] | None = None,
    startup_s: float = PolicyConfig.startup_s,
) -> WorkflowSnapshot:
    """One workflow as the policy sees it: every step and model with the replicas its Deployment carries
    (``replicas`` by part key; a part without one counts its nominal replicas), its signals (absent:
    unknown), what one replica serves at once (:func:`slots_of`) and the pods' start-up delay."""
    signals, slots = signals or {}, slots_of(wf)

    def part(kind: PartKind, name: str, scaling: Scaling, **kw: Any) -> Part:
        key = f"{kind}/{name}"
        n = replicas.get(key, scaling.nominal_replicas())
        sig = signals.get(key, Signals())
        return Part.of(
            kind, name, scaling, n, signals=sig, cold_start_s=startup_s, slots=max(1, slots[key]), **kw
        )

    parts = [part(PartKind.step, s.name, s.scaling, next=tuple(s.next), model=s.model) for s in wf.spec.steps]
    parts += [part(PartKind.model, m.name, m.scaling) for m in wf.spec.models]
    return WorkflowSnapshot(wf.namespace, wf.name, now, wf.spec.slo.p95LatencyMs / 1000.0, tuple(parts))


def hold_down(decisions: Sequence[Decision], health: MetricsHealth | None) -> tuple[list[Decision], set[str]]:
    """Fail static: while metrics are unavailable, an affected part does not scale down (a move into the
    spec's bounds still does). The decisions to carry out, and the targets held here."""
    if health is None or not health.unavailable:
        return list(decisions), set()
    out, held = [], set()
    for d in decisions:
        if d.target in health.affected and d.to_replicas < d.from_replicas and d.rule != Rule.Bounds:
            why = f"metrics unavailable ({health.reason}), not scaling down ({d.reason})"
            why += f"; stays {d.from_replicas}"
            d = Decision(d.target, d.from_replicas, d.from_replicas, Rule.FailStatic, why, d.missing)
            held.add(d.target)
        out.append(d)
    return out, held


def live_condition(status: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == ctype:
            return c
    return None


class ResourceController:
    """One per operator process; kept in kopf's memo. Owns its client and reader (closed on :meth:`stop`)."""

    def __init__(
        self,
        client: KubeClient,
        cache: ClusterCache,
        settings: LoopSettings | None = None,
        clock: Clock | None = None,
        elector: LeaderElector | None = None,
        reader: PrometheusReader | None = None,
        rebalance: RebalanceSettings | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.settings = settings or LoopSettings()
        self.clock: Clock = clock or SystemClock()
        self.elector = elector or LeaderElector(client, self.settings.lease, clock=self.clock)
        self.actuator = Actuator(client, may_write=lambda: self.elector.is_leader)
        self.rebalancer = Rebalancer(
            client, cache, rebalance or RebalanceSettings.from_env(), may_write=lambda: self.elector.is_leader
        )
        url = self.settings.prometheus_url
        self.reader = reader or (
            PrometheusReader(url, recorded=self.settings.recorded_signals) if url else None
        )
        self.metrics = M.ControllerMetrics()
        self.rightsizer = Rightsizer(
            client,
            cache,
            self.reader,
            self.settings.policy,
            self.metrics,
            may_write=lambda: self.elector.is_leader,
        )
        self.state: dict[Key, dict[str, PartState]] = {}
        self.reported: dict[Key, dict[str, Any]] = {}
        self.ready_since: dict[Key, dict[str, float]] = {}
        """Per workflow, part key -> since when (monotonic) its Deployment has had ready replicas."""
        """The ``MetricsUnavailable`` condition this term last wrote, per workflow."""
        self.cycles = 0
        self.available: bool | None = None
        """Whether the last read had every answer (None before the first, or without a reader)."""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._metrics_server: web.AppRunner | None = None

    # ------------------------------------------------------------------ one cycle

    def _workflow(self, key: Key, record: Mapping[str, Any]) -> AgentWorkflow | None:
        """The typed workflow, parsed once per generation in the shared cache (None when invalid: the
        workflow controller reports it as Degraded/InvalidSpec)."""
        return self.cache.parsed(key, record).workflow

    async def read(self) -> Reading | None:
        """Every signal of every workflow, once; None without a reader. Logs when availability changes."""
        if self.reader is None:
            return None
        reading = await self.reader.read()
        self.metrics.read(
            reading.started,
            reading.last_success,
            ((s.value, e.kind.value) for s, e in reading.errors.items()),
        )
        if reading.available != self.available:
            if reading.available:
                again = "again " if self.available is False else ""
                log.info("resource controller: Prometheus answers %s(%s)", again, self.reader.url)
            else:
                first = next(e for e in reading.errors.values() if not e.kind.answered)
                log.warning("resource controller: Prometheus reads fail, holding replicas: %s", first)
            self.available = reading.available
        return reading

    async def cycle(self) -> list[Applied]:
        """Read, then decide and actuate every workflow once; what each actuation did (for workflows with
        a write)."""
        started = time.perf_counter()
        now = self.clock.monotonic()
        keys = self.cache.workflow_keys()
        for gone in set(self.state) - set(keys):
            self.state.pop(gone, None)
            self.reported.pop(gone, None)
            self.ready_since.pop(gone, None)
            self.rebalancer.headroom.pop(gone, None)
        reading = await self.read()
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def one(key: Key) -> Applied | None:
            async with gate:
                try:
                    return await self.workflow_cycle(key, now, reading)
                except Exception:  # one workflow's trouble never stops the others
                    log.exception("resource controller: %s/%s failed this cycle", *key)
                    return None

        results = await asyncio.gather(*(one(k) for k in keys))
        try:  # GPU rebalancing, after every workflow's decision (rebalance_actuator)
            await self.rebalancer.cycle()
        except Exception:
            log.exception("resource controller: GPU rebalancing failed this cycle")
        if self.rightsizer.due(now):
            try:  # right-sizing, on its own cadence (rightsize_actuator)
                await self.rightsizer.cycle(now)
            except Exception:
                log.exception("resource controller: right-sizing failed this round")
        self.cycles += 1
        self.metrics.cycle_duration.observe(time.perf_counter() - started)
        return [r for r in results if r is not None and (r.scaled or r.failed)]

    async def workflow_cycle(self, key: Key, now: float, reading: Reading | None = None) -> Applied | None:
        record = self.cache.workflow_record(key)
        if record is None or record["deleting"]:
            return None
        wf = self._workflow(key, record)
        if wf is None:
            return None
        deployments = {(d.component, d.part): d for d in self.cache.deployments(key)}
        targets: dict[str, Target] = {}
        replicas: dict[str, int] = {}
        ready: dict[str, int] = {}
        for kind, component, parts in (
            (PartKind.step, L.STEP, wf.spec.steps),
            (PartKind.model, L.MODEL, wf.spec.models),
        ):
            for p in parts:
                d = deployments.get((component, p.name))
                if d is not None:
                    replicas[f"{kind}/{p.name}"] = d.desired
                    ready[f"{kind}/{p.name}"] = d.ready
                    targets[f"{kind}/{p.name}"] = Target(d.name, p.scaling)
        try:
            snap = snapshot_of(wf, replicas, now, signals_for(reading, wf), self.settings.policy.startup_s)
        except ValueError:
            return None  # a cycle in next: Degraded, reported by the workflow controller
        before = self.state.get(key, {})
        outcome = decide(snap, before, self.settings.policy)
        health = assess(reading, snap, self._reporting(key, ready, now)) if reading is not None else None
        decisions, held = hold_down(outcome.decisions, health)
        decisions = [d for d in decisions if d.target in targets]
        self.rebalancer.observe(key, snap, decisions, health)
        ref = WorkflowRef(key[0], key[1], str(record["uid"]))
        recorded = ((record.get("status") or {}).get("scaling") or {}).keys()
        applied = await self.actuator.apply(ref, decisions, targets, recorded)
        self.metrics.decided(decisions, applied.unchanged())
        state = dict(outcome.state)
        # A part with no Deployment yet, whose write did not happen, or that failed static without a write
        # keeps what it remembered: the last cycle that saw its signals.
        stale = health.affected if health is not None and health.unavailable else frozenset()
        unchanged = {d.target for d in decisions if not d.changed}
        keep = (set(outcome.state) - set(targets)) | applied.unchanged() | held | (stale & unchanged)
        for part_key in keep & {d.target for d in outcome.decisions}:
            state[part_key] = before.get(part_key, PartState())
        self.state[key] = state
        for done in applied.scaled:
            log.info("%s/%s %s: %s", key[0], key[1], done.target, done.reason)
        if health is not None:
            await self.report(ref, record, health)
        return applied

    def _reporting(self, key: Key, ready: Mapping[str, int], now: float) -> set[str]:
        """Parts whose replicas have been ready for the grace period: their series should be there."""
        since = self.ready_since.setdefault(key, {})
        for part_key in list(since):
            if ready.get(part_key, 0) < 1:
                del since[part_key]
        for part_key, n in ready.items():
            if n > 0:
                since.setdefault(part_key, now)
        return {k for k, t in since.items() if now - t >= self.settings.no_series_grace_s}

    async def report(self, ref: WorkflowRef, record: Mapping[str, Any], health: MetricsHealth) -> None:
        """``MetricsUnavailable`` as ``health`` says, written when it differs from the live status. Missing
        from the live status (a workflow controller's merge patch replaced the list) it is written again
        as this controller last wrote it: same lastTransitionTime, and no second Event for one change."""
        key = (ref.namespace, ref.name)
        live = live_condition(record.get("status"), METRICS_UNAVAILABLE)
        was = live if live is not None else self.reported.get(key)
        gen = int(record["generation"])
        cond = metrics_condition(
            {"conditions": [was] if was else []}, health.unavailable, health.reason, health.message, gen
        )
        if live is not None and all(
            live.get(k) == getattr(cond, k) for k in ("status", "reason", "message", "observedGeneration")
        ):
            return
        if await self.actuator.set_condition(ref, cond, None if was is None else str(was.get("status"))):
            self.reported[key] = cond.model_dump(mode="json")

    # ------------------------------------------------------------------ leadership and lifetime

    async def _lead(self) -> None:
        """Cycles while leading; the elector cancels this when leadership ends."""
        self.state.clear()
        self.reported.clear()
        self.ready_since.clear()
        self.rightsizer.reset()
        self.metrics.leader.set(1)
        try:
            while True:
                started = self.clock.monotonic()
                try:
                    await self.cycle()
                except Exception:
                    log.exception("resource controller cycle failed")
                await self.clock.sleep(max(0.0, self.settings.cycle_s - (self.clock.monotonic() - started)))
        finally:
            self.metrics.leader.set(0)

    def start(self) -> None:
        if not self.settings.enabled:
            log.info("resource controller disabled (AGENTSCALE_RC_ENABLED=0)")
            return
        if self._task is None:
            lease = self.settings.lease
            if self.reader is None:
                log.warning(
                    "resource controller: %s is not set: no signals are read, queue- and slo-mode replicas "
                    "are only moved into [minReplicas, maxReplicas] (docs/tuning.md)",
                    PROMETHEUS_URL_ENV,
                )
            else:
                log.info("resource controller: signals from Prometheus at %s", self.reader.url)
            log.info(
                "resource controller: %s competes for lease %s/%s",
                self.elector.identity,
                lease.namespace,
                lease.name,
            )
            self._task = asyncio.create_task(self.elector.run(self._lead, self._stop), name="agentscale-rc")

    async def serve_metrics(self) -> None:
        """Serve the controller's own metrics on ``settings.metrics_port`` (until :meth:`stop`)."""
        if self._metrics_server is None:
            self._metrics_server = await M.serve(self.metrics, self.settings.metrics_port)

    async def stop(self) -> None:
        """Stop cycling and release the lease (a successor takes over at once), then close the clients."""
        self._stop.set()
        if self._task is not None:
            started = time.monotonic()
            done, _ = await asyncio.wait([self._task], timeout=self.settings.lease.renew_deadline_s + 5.0)
            if not done:
                log.warning(
                    "resource controller did not stop in %.0fs; cancelling", time.monotonic() - started
                )
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._metrics_server is not None:
            await self._metrics_server.cleanup()
            self._metrics_server = None
        if self.reader is not None:
            await self.reader.close()
        await self.client.close()
