"""The resource controller's loop: leader only, one cycle every period, over every workflow in the cache.

A cycle, per workflow in the shared :class:`~agentscale.cache.ClusterCache` (kopf's indexes: no LIST per
cycle): a :class:`WorkflowSnapshot` of its steps and models with the replicas their Deployments carry now
and the signals the sensors give, :func:`decide`, then the :class:`Actuator` for what changed.

Signals from Prometheus are not wired yet (``signals.py`` is the next step), so every signal is unknown and
the policy fails static: it holds every part, except that a count outside the spec's [min, max] moves into
it (``Rule.Bounds``). That is the clamp the workflow controller's reconcile used to do; it lives here now,
so the operator's reconcile never writes the replicas of a queue- or slo-mode part. A cycle that changes
nothing writes nothing (the idle operator's e2e test counts).

Leadership: :class:`ResourceController` runs the cycles only while its :class:`LeaderElector` holds the
Lease; the actuator asks ``is_leader`` before each write. A new term starts with empty policy state (the
policy then refuses to scale down for one stabilization window: safe).

Settings come from the environment (``LoopSettings.from_env``; docs/tuning.md lists them):
AGENTSCALE_RC_ENABLED (1), AGENTSCALE_RC_CYCLE_SECONDS (15), and the lease's (``LeaseConfig.from_env``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentscale.api.models import AgentWorkflow
from agentscale.cache import ClusterCache, Key
from agentscale.kube import KubeClient
from agentscale.render import labels as L
from agentscale.resource_controller.actuator import Actuator, Applied, Target, WorkflowRef
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.decide import decide
from agentscale.resource_controller.leader import Clock, LeaderElector, LeaseConfig, SystemClock
from agentscale.resource_controller.snapshot import Part, PartKind, Signals, WorkflowSnapshot
from agentscale.resource_controller.state import PartState

log = logging.getLogger("agentscale.resource_controller")


@dataclass(frozen=True)
class LoopSettings:
    enabled: bool = True
    cycle_s: float = 15.0
    """Seconds from the start of one cycle to the start of the next."""
    concurrency: int = 16
    """Workflows actuated at once within a cycle."""
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
            lease=LeaseConfig.from_env(env),
        )


def snapshot_of(
    wf: AgentWorkflow, replicas: Mapping[str, int], now: float, signals: Mapping[str, Signals] | None = None
) -> WorkflowSnapshot:
    """One workflow as the policy sees it: every step and model with the replicas its Deployment carries
    (``replicas`` by part key; a part without one counts its nominal replicas) and its signals (absent:
    unknown)."""
    signals = signals or {}
    parts: list[Part] = []
    for s in wf.spec.steps:
        key = f"{PartKind.step}/{s.name}"
        n = replicas.get(key, s.scaling.nominal_replicas())
        sig = signals.get(key, Signals())
        parts.append(
            Part.of(PartKind.step, s.name, s.scaling, n, signals=sig, next=tuple(s.next), model=s.model)
        )
    for m in wf.spec.models:
        key = f"{PartKind.model}/{m.name}"
        n = replicas.get(key, m.scaling.nominal_replicas())
        parts.append(Part.of(PartKind.model, m.name, m.scaling, n, signals=signals.get(key, Signals())))
    return WorkflowSnapshot(wf.namespace, wf.name, now, wf.spec.slo.p95LatencyMs / 1000.0, tuple(parts))


class ResourceController:
    """One per operator process; kept in kopf's memo. Owns its client (closed on :meth:`stop`)."""

    def __init__(
        self,
        client: KubeClient,
        cache: ClusterCache,
        settings: LoopSettings | None = None,
        clock: Clock | None = None,
        elector: LeaderElector | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.settings = settings or LoopSettings()
        self.clock: Clock = clock or SystemClock()
        self.elector = elector or LeaderElector(client, self.settings.lease, clock=self.clock)
        self.actuator = Actuator(client, may_write=lambda: self.elector.is_leader)
        self.state: dict[Key, dict[str, PartState]] = {}
        self.cycles = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ one cycle

    def _workflow(self, key: Key, record: Mapping[str, Any]) -> AgentWorkflow | None:
        """The typed workflow, parsed once per generation in the shared cache (None when invalid: the
        workflow controller reports it as Degraded/InvalidSpec)."""
        return self.cache.parsed(key, record).workflow

    async def cycle(self) -> list[Applied]:
        """Decide and actuate every workflow once; what each actuation did (for workflows with a write)."""
        now = self.clock.monotonic()
        keys = self.cache.workflow_keys()
        for gone in set(self.state) - set(keys):
            self.state.pop(gone, None)
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def one(key: Key) -> Applied | None:
            async with gate:
                try:
                    return await self.workflow_cycle(key, now)
                except Exception:  # one workflow's trouble never stops the others
                    log.exception("resource controller: %s/%s failed this cycle", *key)
                    return None

        results = await asyncio.gather(*(one(k) for k in keys))
        self.cycles += 1
        return [r for r in results if r is not None and (r.scaled or r.failed)]

    async def workflow_cycle(self, key: Key, now: float) -> Applied | None:
        record = self.cache.workflow_record(key)
        if record is None or record["deleting"]:
            return None
        wf = self._workflow(key, record)
        if wf is None:
            return None
        deployments = {(d.component, d.part): d for d in self.cache.deployments(key)}
        targets: dict[str, Target] = {}
        replicas: dict[str, int] = {}
        for kind, component, parts in (
            (PartKind.step, L.STEP, wf.spec.steps),
            (PartKind.model, L.MODEL, wf.spec.models),
        ):
            for p in parts:
                d = deployments.get((component, p.name))
                if d is not None:
                    replicas[f"{kind}/{p.name}"] = d.desired
                    targets[f"{kind}/{p.name}"] = Target(d.name, p.scaling)
        try:
            snap = snapshot_of(wf, replicas, now)
        except ValueError:
            return None  # a cycle in next: Degraded, reported by the workflow controller
        before = self.state.get(key, {})
        outcome = decide(snap, before, self.settings.policy)
        decisions = [d for d in outcome.decisions if d.target in targets]
        applied = await self.actuator.apply(
            WorkflowRef(key[0], key[1], str(record["uid"])), decisions, targets
        )
        state = dict(outcome.state)
        # A part with no Deployment yet, or whose write did not happen, keeps what it remembered.
        for part_key in ({d.target for d in outcome.decisions} - set(targets)) | applied.unchanged():
            state[part_key] = before.get(part_key, PartState())
        self.state[key] = state
        for done in applied.scaled:
            log.info("%s/%s %s: %s", key[0], key[1], done.target, done.reason)
        return applied

    # ------------------------------------------------------------------ leadership and lifetime

    async def _lead(self) -> None:
        """Cycles while leading; the elector cancels this when leadership ends."""
        self.state.clear()
        while True:
            started = self.clock.monotonic()
            try:
                await self.cycle()
            except Exception:
                log.exception("resource controller cycle failed")
            await self.clock.sleep(max(0.0, self.settings.cycle_s - (self.clock.monotonic() - started)))

    def start(self) -> None:
        if not self.settings.enabled:
            log.info("resource controller disabled (AGENTSCALE_RC_ENABLED=0)")
            return
        if self._task is None:
            lease = self.settings.lease
            log.info(
                "resource controller: %s competes for lease %s/%s",
                self.elector.identity,
                lease.namespace,
                lease.name,
            )
            self._task = asyncio.create_task(self.elector.run(self._lead, self._stop), name="agentscale-rc")

    async def stop(self) -> None:
        """Stop cycling and release the lease (a successor takes over at once), then close the client."""
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
        await self.client.close()
