"""The workflow controller: reconcile each AgentWorkflow to its children and keep its status current.

kopf is used for its watches and indexes (``handlers.py`` wires events in; ``cache.py`` reads the indexes);
the reconciles run on this module's own work queue, with our own retries (jittered exponential backoff)
rather than kopf's, because kopf's per-object handler machinery (diff-base, progress annotations, a PATCH per
retry) was the largest cost at a thousand workflows (docs/benchmarks.md, operator section).

State kept in memory is only a cache of what the API server says plus what this process last rendered and
wrote; every decision is recomputed from it, so a restart converges to the same result.

Leadership (``leadership.py`` says why one Lease for both controllers): only the replica holding the Lease
writes. A standby keeps kopf's watches and indexes and checks drift in memory, so a takeover starts warm, but
queues, applies, prunes, patches and posts nothing. Winning a term forgets what an earlier term remembered
writing and re-queues every cached workflow, so nothing that changed while standing by is lost (a workflow
already right costs no request); losing it drops the queue, and the client refuses every later write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentscale import kinds
from agentscale.api.models import API_VERSION, KIND, AgentWorkflow
from agentscale.cache import ClusterCache, Key
from agentscale.drift import drifted_fields, live_digests
from agentscale.kube import ApiError, KubeClient
from agentscale.leadership import LeaderOnlyClient, Leadership, NotLeading
from agentscale.reconcile import Outcome, Plan, execute, plan_children
from agentscale.render import ChildKey, child_key, render_workflow
from agentscale.render import labels as L
from agentscale.status import ANNOUNCED_CONDITIONS, DEGRADED, Observed, compute_status, status_patch

log = logging.getLogger("agentscale")
_OWNED = {k.kind: k for k in kinds.OWNED}

# A child that drifts again this soon after we put it back counts toward backing off.
DRIFT_REPEAT_WINDOW_S = 60.0
DRIFT_FREE_CORRECTIONS = 3


def reported_invalid(record: Mapping[str, Any]) -> str | None:
    """The InvalidSpec message the workflow's status already carries (a previous leader announced it)."""
    for c in (record.get("status") or {}).get("conditions") or []:
        if c.get("type") == DEGRADED and c.get("reason") == "InvalidSpec" and c.get("status") == "True":
            return str(c.get("message", ""))
    return None


@dataclass
class WorkflowState:
    generation: int
    workflow: AgentWorkflow | None
    problems: list[str] = field(default_factory=list)
    apply_error: str = ""


@dataclass
class Rendered:
    """The children one generation of a workflow renders to, kept compact (JSON) for drift checks."""

    generation: int
    uid: str
    workflow: AgentWorkflow | None
    problems: list[str]
    children: dict[ChildKey, bytes] = field(default_factory=dict)

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.children.values()]


def conditions_turned_true(
    old: Mapping[str, Any], new: Mapping[str, Any], types: tuple[str, ...]
) -> list[dict[str, Any]]:
    before = {c.get("type"): c.get("status") for c in old.get("conditions") or []}
    return [
        c
        for c in new.get("conditions") or []
        if c["type"] in types and c["status"] == "True" and before.get(c["type"]) != "True"
    ]


class WorkflowController:
    """One per process; kept in kopf's memo."""

    def __init__(
        self,
        client: KubeClient,
        cache: ClusterCache | None = None,
        debounce: float = 0.2,
        status_concurrency: int = 16,
        reconcile_workers: int = 16,
        leader: Leadership | None = None,
    ) -> None:
        """``leader`` None: this process always leads (a single replica without a Lease; unit tests)."""
        self.client = client if leader is None else LeaderOnlyClient.of(client, lambda: leader.is_leader)
        self.cache = cache or ClusterCache()
        self.debounce = debounce
        self.status_concurrency = status_concurrency
        self.reconcile_workers = reconcile_workers
        self.state: dict[Key, WorkflowState] = {}
        self.written: dict[Key, dict[str, Any]] = {}
        self.rendered: dict[Key, Rendered] = {}
        # (metadata, rest) digests of each child last found free of drift
        self.verified: dict[Key, dict[ChildKey, tuple[str, str]]] = {}
        self.drifted: dict[Key, dict[ChildKey, list[str]]] = {}
        self.corrections: dict[tuple[Key, ChildKey], tuple[int, float]] = {}
        self.done_generation: dict[Key, int] = {}  # the generation last reconciled to completion
        self.failures: dict[Key, int] = {}
        self.refresh_failures: dict[Key, int] = {}  # status refreshes failed in a row
        # Workflows whose children were deleted, to be confirmed before any is created again; and the uids of
        # workflows found gone from the API server while kopf's index still holds them (see _still_there).
        self._recheck: set[Key] = set()
        self.vanished: dict[Key, str] = {}
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._posts: set[asyncio.Future[None]] = set()  # Events posted from synchronous code
        self._closing = False
        # Between a term's start and its end (the writes themselves ask the elector, which is fresher).
        self.leading = leader is None
        if leader is not None:
            leader.add_listener(self.take_over, self.stand_by)

    # ------------------------------------------------------------------ desired state

    def render(self, key: Key, record: Mapping[str, Any]) -> Rendered:
        """Parse and render one workflow; cached per generation (reconcile and drift checks share it)."""
        have = self.rendered.get(key)
        if have is not None and have.generation == record["generation"] and have.uid == record["uid"]:
            return have
        parsed = self.cache.parsed(key, record)
        wf = parsed.workflow
        if wf is None:
            out = Rendered(record["generation"], record["uid"], None, parsed.problems)
        else:
            objs = render_workflow(wf, record["uid"])
            children = {child_key(o): json.dumps(o, separators=(",", ":")).encode() for o in objs}
            out = Rendered(record["generation"], record["uid"], wf, [], children)
        self.rendered[key] = out
        return out

    def check_drift(self, key: Key, body: Mapping[str, Any]) -> None:
        """A child changed: if a field we own no longer holds what we applied, schedule putting it back.

        Cheap for status-only updates (the live digest is unchanged); a child of an older generation is not
        drift (the next reconcile re-applies it anyway).
        """
        meta = body.get("metadata") or {}
        ck = (str(body.get("kind", "")), str(meta.get("name", "")))
        kind = _OWNED.get(ck[0])
        digests = live_digests(body, kind is not None and kind.generation_tracks_spec)
        seen = self.verified.setdefault(key, {})
        before = seen.get(ck)
        if before == digests:
            return
        record = self.cache.workflow_record(key)
        if record is None or record["deleting"]:
            return
        raw = self.render(key, record).children.get(ck)
        if raw is None:
            return  # not wanted (any more): pruning is the reconcile's job
        want = json.loads(raw)
        live_hash = (meta.get("annotations") or {}).get(L.HASH_ANNOTATION)
        if live_hash != want["metadata"]["annotations"][L.HASH_ANNOTATION]:
            return  # rendered from another generation (or its hash was edited): the plan re-applies it
        fields = drifted_fields(want, body, beyond_metadata=before is None or before[1] != digests[1])
        if not fields:
            seen[ck] = digests
            self.drifted.get(key, {}).pop(ck, None)  # put back (by us, a leader or a person)
            return
        self.drifted.setdefault(key, {})[ck] = fields
        self._schedule_correction(key, ck, fields)

    def child_gone(self, key: Key, ck: ChildKey) -> None:
        """A child was deleted: forget what was verified about it (the reconcile puts it back if wanted, once
        the workflow is confirmed to exist: see _still_there)."""
        self.verified.get(key, {}).pop(ck, None)
        self.drifted.get(key, {}).pop(ck, None)
        self._recheck.add(key)

    async def _still_there(self, key: Key, uid: str) -> bool:
        """Whether the workflow still exists (same uid) before its deleted children are created again.

        After a watch expires (410 Gone) kopf lists again but never reports what was deleted meanwhile, so its
        index keeps such a workflow for good. The garbage collector deletes its children, each DELETED event
        re-queues it, and re-creating them would loop for ever (measured: 1,302 re-applying reconciles of one
        workflow in four minutes, e2e/tests/test_faults_operator.py). One GET, only after a child was
        deleted."""
        live = await self.client.get(API_VERSION, KIND, key[0], key[1])  # an error: the retry asks again
        self._recheck.discard(key)
        if live is not None and (live.get("metadata") or {}).get("uid") == uid:
            return True
        log.info("%s/%s: no longer on the API server (uid %s); forgetting it", key[0], key[1], uid)
        self.forget(key)
        self.vanished[key] = uid
        return False

    def _schedule_correction(self, key: Key, ck: ChildKey, fields: list[str]) -> None:
        """Put a drifted child back now, or later when something keeps changing it (a webhook or another
        controller fighting us): back off exponentially instead of writing in a tight loop. A standby only
        remembers the drift (a takeover's reconcile puts it back)."""
        if not self.leading:
            return
        now = time.monotonic()
        count, last = self.corrections.get((key, ck), (0, 0.0))
        count = count + 1 if now - last < DRIFT_REPEAT_WINDOW_S else 1
        self.corrections[(key, ck)] = (count, now)
        if count <= DRIFT_FREE_CORRECTIONS:
            self.schedule(key, force=True)
            return
        delay = min(300.0, 5.0 * 2 ** (count - DRIFT_FREE_CORRECTIONS - 1))
        log.warning("%s/%s keeps drifting (%d corrections in a row); next in %.0fs", *ck, count, delay)
        asyncio.get_running_loop().call_later(delay, self.schedule, key, True)
        if count == DRIFT_FREE_CORRECTIONS + 1:
            record = self.cache.workflow_record(key) or {}
            msg = (
                f"{ck[0]}/{ck[1]} was changed again right after being put back ({', '.join(fields)}): "
                "something else writes these fields (another controller, a webhook, a script). "
                "Corrections back off up to 5 minutes; change the AgentWorkflow instead."
            )
            uid = str(record.get("uid", ""))
            post = asyncio.ensure_future(self.post(key, uid, "Warning", "DriftPersists", msg))
            self._posts.add(post)
            post.add_done_callback(self._posts.discard)

    # ------------------------------------------------------------------ reconcile

    async def post(self, key: Key, uid: str, type_: str, reason: str, message: str) -> None:
        """An Event on the workflow, for what a person should notice. Never fails the caller."""
        involved = {"apiVersion": API_VERSION, "kind": KIND, "name": key[1], "namespace": key[0], "uid": uid}
        try:
            await self.client.post_event(involved, type_, reason, message)
        except NotLeading:
            log.debug("event %s on %s/%s not posted: not the leader", reason, key[0], key[1])
        except Exception as exc:
            log.warning("could not record event %s on %s/%s: %s", reason, key[0], key[1], exc)

    async def reconcile(self, key: Key, record: Mapping[str, Any]) -> Outcome | None:
        """Render, diff against the children that exist, apply the difference, refresh status.

        Invalid input never raises: it becomes a Degraded/InvalidSpec condition and a Warning Event.
        Transient API errors raise ApiError (the work queue retries with backoff).
        """
        generation, uid = record["generation"], record["uid"]
        rendered = self.render(key, record)
        wf = rendered.workflow
        if wf is None:
            before = self.state.get(key)
            said = "; ".join(before.problems) if before else reported_invalid(record)
            self.state[key] = WorkflowState(generation, None, rendered.problems)
            if said != "; ".join(rendered.problems):  # not announced yet (by us or an earlier leader)
                await self.post(key, uid, "Warning", "InvalidSpec", "; ".join(rendered.problems))
            await self.refresh(key)
            return None
        drifted = self.drifted.pop(key, {})
        plan: Plan = plan_children(wf, rendered.objects(), self.cache.existing_children(key), drifted)
        if plan.apply and key in self._recheck and not await self._still_there(key, uid):
            return None
        outcome = Outcome()
        if not plan.empty:
            try:
                outcome = await execute(self.client, key[0], plan)
            except BaseException:
                # Not put back yet: keep the drift for the retry (newer findings win).
                self.drifted[key] = {**drifted, **self.drifted.get(key, {})}
                raise
        error = "; ".join(outcome.rejected)
        self.state[key] = WorkflowState(generation, wf, [], error)
        if outcome.rejected:
            await self.post(key, uid, "Warning", "ApplyFailed", error)
        if plan.drifted:
            await self.post(key, uid, "Normal", "DriftCorrected", "Put back " + "; ".join(plan.drifted))
        if outcome.applied or outcome.pruned:
            log.info("%s/%s: applied %d, pruned %d", *key, len(outcome.applied), len(outcome.pruned))
            msg = f"Applied {len(outcome.applied)} objects"
            if outcome.pruned:
                msg += f", pruned {', '.join(outcome.pruned)}"
            await self.post(key, uid, "Normal", "Reconciled", msg)
        await self.refresh(key)
        return outcome

    # ------------------------------------------------------------------ the work queue

    def schedule(self, key: Key, force: bool = False) -> None:
        """Ask for a reconcile of one workflow. Level-triggered and de-duplicated: a workflow whose
        generation was already reconciled is skipped (unless forced), one queued twice runs once, and one
        that changes while it is being reconciled runs again right after. A standby queues nothing."""
        if not self.leading:
            return
        record = self.cache.workflow_record(key)
        if record is None or record["deleting"] or self.vanished.get(key) == record["uid"]:
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
            record = self.cache.workflow_record(key)
            if record is None or record["deleting"] or not self.leading:
                continue
            self._running.add(key)
            try:
                await self.reconcile(key, record)
                self.done_generation[key] = record["generation"]
                self.failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except NotLeading:
                if self.leading:  # a renewal is overdue but the term goes on: try again later
                    self._retry_later(key)
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
        if not self.leading:
            return
        self._dirty.add(key)
        self._wake.set()

    async def refresh(self, key: Key) -> None:
        st = self.state.get(key)
        record = self.cache.workflow_record(key)
        if st is None or record is None:
            return
        old = self.written.get(key) or record.get("status") or {}
        obs = Observed(
            generation=st.generation,
            workflow=st.workflow,
            problems=st.problems,
            apply_error=st.apply_error,
            deployments=self.cache.deployments(key),
            pending=self.cache.pending(key),
            missing_secrets=self.cache.missing_secrets(key[0]),
            previous=old,
            live=record.get("status"),  # keeps the resource controller's conditions in the list written
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
        for cond in conditions_turned_true(old, new, ANNOUNCED_CONDITIONS):
            if cond.get("reason") != "InvalidSpec":  # already announced by reconcile
                await self.post(key, str(record.get("uid", "")), "Warning", cond["reason"], cond["message"])

    def forget(self, key: Key) -> None:
        self.cache.forget(key)
        self.state.pop(key, None)
        self.written.pop(key, None)
        self.rendered.pop(key, None)
        self.verified.pop(key, None)
        self.drifted.pop(key, None)
        self.done_generation.pop(key, None)
        self.failures.pop(key, None)
        self.refresh_failures.pop(key, None)
        self._dirty.discard(key)
        self._recheck.discard(key)
        for ck in [c for c in self.corrections if c[0] == key]:
            del self.corrections[ck]

    # ------------------------------------------------------------------ leadership

    def take_over(self) -> None:
        """A term starts: forget what an earlier term remembered writing (another leader wrote since) and
        reconcile every cached workflow (a standby queued nothing)."""
        self.leading = True
        for remembered in (
            self.state,
            self.written,
            self.done_generation,
            self.failures,
            self.refresh_failures,
            self.corrections,
        ):
            remembered.clear()
        keys = self.cache.workflow_keys()
        log.info("leading: re-queueing %d workflows", len(keys))
        for key in keys:
            self.schedule(key, force=True)

    def stand_by(self) -> None:
        """The term ended: drop the queue (the next leader re-queues everything); in-flight writes are
        refused by the client."""
        self.leading = False
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued.clear()
        self._again.clear()
        self._dirty.clear()
        log.info("standing by: no writes until this replica leads again")

    def _refresh_later(self, key: Key) -> None:
        """A status refresh failed: try it again after a jittered backoff, whether or not another event
        comes (the last event of a quiet workflow must not be lost to an outage)."""
        self._dirty.add(key)
        n = self.refresh_failures[key] = self.refresh_failures.get(key, 0) + 1
        delay = min(30.0, 0.5 * 2 ** min(n, 6)) * (0.5 + random.random())
        asyncio.get_running_loop().call_later(delay, self._wake.set)

    async def run(self) -> None:
        """The status loop: wake on child events, wait a beat so bursts coalesce, refresh what changed."""
        gate = asyncio.Semaphore(self.status_concurrency)

        async def one(key: Key) -> None:
            async with gate:
                try:
                    await self.refresh(key)
                    self.refresh_failures.pop(key, None)
                except NotLeading:
                    if self.leading:  # a renewal is overdue but the term goes on
                        self._refresh_later(key)
                except Exception as exc:  # keep the loop alive; retried with backoff
                    log.warning("status refresh of %s/%s failed (will retry): %s", key[0], key[1], exc)
                    self._refresh_later(key)

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
