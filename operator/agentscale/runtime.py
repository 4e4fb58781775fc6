"""The operator's domain: reconcile one workflow, keep its status current. kopf wiring lives in handlers.py.

State kept in memory is only a cache of what the API server says (kopf indexes) plus what this process last
wrote; every decision is recomputed from it, so a restart converges to the same result.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentscale.api.models import API_VERSION, KIND, AgentWorkflow
from agentscale.api.validation import InvalidSpec, parse_spec
from agentscale.kube import ApiError, KubeClient
from agentscale.reconcile import ExistingChild, Outcome, Plan, execute, plan_children
from agentscale.render import ChildKey, render_workflow
from agentscale.status import DeploymentSummary, Observed, PendingPod, compute_status, status_patch

log = logging.getLogger("agentscale")

Key = tuple[str, str]  # (namespace, workflow name)


@dataclass
class WorkflowState:
    generation: int
    workflow: AgentWorkflow | None
    problems: list[str] = field(default_factory=list)
    apply_error: str = ""


def conditions_turned_true(
    old: Mapping[str, Any], new: Mapping[str, Any], types: tuple[str, ...]
) -> list[dict[str, Any]]:
    before = {c.get("type"): c.get("status") for c in old.get("conditions") or []}
    return [
        c
        for c in new.get("conditions") or []
        if c["type"] in types and c["status"] == "True" and before.get(c["type"]) != "True"
    ]


def _first(store: Any) -> Any:
    for item in store or ():
        return item
    return None


class Operator:
    """One per process; kept in kopf's memo."""

    def __init__(
        self,
        client: KubeClient,
        debounce: float = 0.2,
        status_concurrency: int = 16,
        reconcile_workers: int = 16,
    ) -> None:
        self.client = client
        self.debounce = debounce
        self.status_concurrency = status_concurrency
        self.reconcile_workers = reconcile_workers
        self.state: dict[Key, WorkflowState] = {}
        self.written: dict[Key, dict[str, Any]] = {}
        self.indexes: dict[str, Any] = {}
        self.done_generation: dict[Key, int] = {}  # the generation last reconciled to completion
        self.failures: dict[Key, int] = {}
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # ------------------------------------------------------------------ indexes (kopf gives them to handlers)

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        for name, value in kwargs.items():
            if name.endswith("_idx") and name not in self.indexes:
                self.indexes[name] = value

    def _values(self, index: str, key: Key) -> Iterable[Any]:
        idx = self.indexes.get(index)
        if idx is None or key not in idx:
            return ()
        return list(idx[key])

    def existing_children(self, key: Key) -> dict[ChildKey, ExistingChild]:
        out: dict[ChildKey, ExistingChild] = {}
        for d in self._values("deployments_idx", key):
            out[("Deployment", d.name)] = ExistingChild("Deployment", d.name, d.spec_hash, d.desired)
        for index in ("configmaps_idx", "services_idx", "hpas_idx", "pdbs_idx"):
            for c in self._values(index, key):
                out[(c.kind, c.name)] = c
        return out

    def deployments(self, key: Key) -> list[DeploymentSummary]:
        return list(self._values("deployments_idx", key))

    def pending(self, key: Key) -> list[PendingPod]:
        return list(self._values("pods_idx", key))

    def workflow_record(self, key: Key) -> Mapping[str, Any] | None:
        record: Mapping[str, Any] | None = _first(self._values("workflows_idx", key))
        return record

    # ------------------------------------------------------------------ reconcile

    async def post(self, key: Key, uid: str, type_: str, reason: str, message: str) -> None:
        """An Event on the workflow, for what a person should notice. Never fails the caller."""
        involved = {"apiVersion": API_VERSION, "kind": KIND, "name": key[1], "namespace": key[0], "uid": uid}
        try:
            await self.client.post_event(involved, type_, reason, message)
        except Exception as exc:
            log.warning("could not record event %s on %s/%s: %s", reason, key[0], key[1], exc)

    async def reconcile(self, key: Key, spec: Mapping[str, Any], generation: int, uid: str) -> Outcome | None:
        """Render, diff against the children that exist, apply the difference, refresh status.

        Invalid input never raises: it becomes a Degraded/InvalidSpec condition and a Warning Event.
        Transient API errors raise ApiError (kopf retries with backoff).
        """
        namespace, name = key
        try:
            parsed = parse_spec(spec)
        except InvalidSpec as exc:
            changed = self.state.get(key, WorkflowState(-1, None)).problems != exc.problems
            self.state[key] = WorkflowState(generation, None, exc.problems)
            if changed:
                await self.post(key, uid, "Warning", "InvalidSpec", "; ".join(exc.problems))
            await self.refresh(key)
            return None
        wf = AgentWorkflow(metadata={"name": name, "namespace": namespace}, spec=parsed)
        desired = render_workflow(wf, uid)
        plan: Plan = plan_children(wf, desired, self.existing_children(key))
        outcome = Outcome()
        if not plan.empty:
            outcome = await execute(self.client, namespace, plan)
        error = "; ".join(outcome.rejected)
        self.state[key] = WorkflowState(generation, wf, [], error)
        if outcome.rejected:
            await self.post(key, uid, "Warning", "ApplyFailed", error)
        if outcome.applied or outcome.pruned:
            msg = f"Applied {len(outcome.applied)} objects"
            if outcome.pruned:
                msg += f", pruned {', '.join(outcome.pruned)}"
            await self.post(key, uid, "Normal", "Reconciled", msg)
        for dep, old, new in outcome.scaled:
            msg = f"{dep}: {old} -> {new} replicas (clamped to the spec's bounds)"
            await self.post(key, uid, "Normal", "Scaled", msg)
        await self.refresh(key)
        return outcome

    # ------------------------------------------------------------------ the work queue

    def schedule(self, key: Key, force: bool = False) -> None:
        """Ask for a reconcile of one workflow. Level-triggered and de-duplicated: a workflow whose
        generation was already reconciled is skipped (unless forced), one queued twice runs once, and one
        that changes while it is being reconciled runs again right after."""
        record = self.workflow_record(key)
        if record is None or record["deleting"]:
            return
        if not force and self.done_generation.get(key) == record["generation"]:
            return
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def _retry_later(self, key: Key) -> None:
        n = self.failures[key] = self.failures.get(key, 0) + 1
        delay = min(60.0, 0.5 * 2 ** min(n, 7)) * (0.5 + random.random())
        asyncio.get_running_loop().call_later(delay, self.schedule, key, True)

    async def _worker(self) -> None:
        while not self._closing:
            key = await self._queue.get()
            self._queued.discard(key)
            record = self.workflow_record(key)
            if record is None or record["deleting"]:
                continue
            self._running.add(key)
            try:
                await self.reconcile(key, record["spec"], record["generation"], record["uid"])
                self.done_generation[key] = record["generation"]
                self.failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # transient API trouble or a bug: retry with backoff, never die
                log.warning("reconcile of %s/%s failed (will retry): %s", key[0], key[1], exc)
                self._retry_later(key)
            finally:
                self._running.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.schedule(key, force=True)

    # ------------------------------------------------------------------ status

    def request_refresh(self, key: Key) -> None:
        """Coalesce status refreshes: many child events in a burst cost one status computation."""
        self._dirty.add(key)
        self._wake.set()

    async def refresh(self, key: Key) -> None:
        st = self.state.get(key)
        record = self.workflow_record(key)
        if st is None or record is None:
            return
        old = self.written.get(key) or record.get("status") or {}
        obs = Observed(
            generation=st.generation,
            workflow=st.workflow,
            problems=st.problems,
            apply_error=st.apply_error,
            deployments=self.deployments(key),
            pending=self.pending(key),
            previous=old,
        )
        new = compute_status(obs)
        patch = status_patch(old, new)
        if patch is None:
            return
        try:
            await self.client.patch_status(API_VERSION, KIND, key[0], key[1], patch)
        except ApiError as exc:
            if exc.status == 404:
                self.forget(key)
                return
            raise
        self.written[key] = {**old, **new}
        for cond in conditions_turned_true(old, new, ("GPUCapacityShort", "Degraded")):
            if cond.get("reason") != "InvalidSpec":  # already announced by reconcile
                await self.post(key, str(record.get("uid", "")), "Warning", cond["reason"], cond["message"])

    def forget(self, key: Key) -> None:
        self.state.pop(key, None)
        self.written.pop(key, None)
        self.done_generation.pop(key, None)
        self.failures.pop(key, None)
        self._dirty.discard(key)

    async def run(self) -> None:
        """The status loop: wake on child events, wait a beat so bursts coalesce, refresh what changed."""
        gate = asyncio.Semaphore(self.status_concurrency)

        async def one(key: Key) -> None:
            async with gate:
                try:
                    await self.refresh(key)
                except Exception as exc:  # keep the loop alive; the next event retries
                    log.warning("status refresh of %s/%s failed: %s", key[0], key[1], exc)
                    self._dirty.add(key)

        while not self._closing:
            await self._wake.wait()
            await asyncio.sleep(self.debounce)
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            await asyncio.gather(*(one(k) for k in batch))

    def start(self) -> None:
        if not self._tasks:
            self._tasks.append(asyncio.create_task(self.run(), name="agentscale-status"))
            for i in range(self.reconcile_workers):
                self._tasks.append(asyncio.create_task(self._worker(), name=f"agentscale-reconcile-{i}"))

    async def stop(self) -> None:
        # The loops also check ``_closing``: a cancellation swallowed by a library must not hang shutdown.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5.0)
            for task in pending:
                log.warning("%s did not stop within 5s; leaving it", task.get_name())
        self._tasks.clear()
        await self.client.close()
