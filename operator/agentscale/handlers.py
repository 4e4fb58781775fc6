"""kopf registration only: events in, calls into the workflow controller out.

Every watched kind comes from ``kinds.py``: one index and one event handler per owned kind, the workflows'
index and handler, the unscheduled pods', and the kubelet's FailedMount Events'. Adding an owned kind there
registers it here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf

from agentscale import kinds
from agentscale.cache import ClusterCache
from agentscale.kube import KubeClient
from agentscale.reconcile import ExistingChild
from agentscale.render import labels as L
from agentscale.resource_controller.actuator import FIELD_MANAGER as RC_FIELD_MANAGER
from agentscale.resource_controller.leader import LeaderElector
from agentscale.resource_controller.loop import LoopSettings, ResourceController
from agentscale.status import missing_secret, pending_pod, summarize_deployment
from agentscale.workflow_controller import WorkflowController

OWNED_LABELS: dict[str, Any] = {
    "app.kubernetes.io/managed-by": L.MANAGED_BY,
    L.WORKFLOW_LABEL: kopf.PRESENT,
}


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff-base storage for an operator without on.create/update/delete handlers: stores nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.PermanentError("No Kubernetes credentials: set KUBECONFIG or run in a pod.")
    return info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    prefix = "agentscale.io"
    settings.persistence.finalizer = f"{prefix}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    # No handler here diffs old against new (reconciles are level-triggered on generation), so skip
    # kopf's per-event deep copy of every body: it was the largest CPU cost at scale.
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING  # log lines are not Events; we post Events ourselves
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4
    # Server-side filters: only our children cross the wire, and of pods only the unscheduled ones (the
    # only pods status looks at). A pod that gets scheduled leaves the selection as a DELETED event.
    for kind in (*kinds.OWNED, kinds.POD):
        settings.watching.label_selectors[kind.plural] = kinds.OWNED_SELECTOR
    settings.watching.field_selectors[kinds.POD.plural] = kinds.POD_FIELD_SELECTOR
    settings.watching.field_selectors[kinds.EVENT.plural] = kinds.FAILED_MOUNT_FIELD_SELECTOR
    info = _login(settings)
    client = KubeClient.from_connection(info, L.FIELD_MANAGER, limit=64)
    debounce = float(os.environ.get("AGENTSCALE_STATUS_DEBOUNCE", "0.5"))
    memo.cache = ClusterCache()
    # One Lease leads both controllers (leadership.py says why); kopf peering would pause neither.
    rc_client = KubeClient.from_connection(info, RC_FIELD_MANAGER, limit=16)
    rc_settings = LoopSettings.from_env()
    memo.elector = LeaderElector(rc_client, rc_settings.lease)
    memo.workflows = WorkflowController(client, memo.cache, debounce=debounce, leader=memo.elector)
    memo.workflows.start()
    memo.resources = ResourceController(rc_client, memo.cache, rc_settings, elector=memo.elector)
    memo.resources.start()  # runs the election, its cycles being the term's work
    await memo.resources.serve_metrics()  # its own /metrics on AGENTSCALE_METRICS_PORT (9090; 0: off)
    if not rc_settings.enabled:
        memo.elector.start()  # the workflow controller still needs a leader


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.workflows.stop()  # first: nothing of ours is written after the Lease is released
    await memo.elector.stop()  # when it ran on its own; releases the Lease
    await memo.resources.stop()  # releases the Lease, so another replica leads at once


def _controller(memo: kopf.Memo, kwargs: Mapping[str, Any]) -> WorkflowController:
    ctl: WorkflowController = memo.workflows
    ctl.cache.bind(kwargs)
    return ctl


# ---------------------------------------------------------------------------------------------- indexes


async def _workflow_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {
        (namespace, name): {
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
            "generation": body.metadata.get("generation") or 0,
            "uid": body.metadata.uid,
            "deleting": bool(body.metadata.get("deletionTimestamp")),
        }
    }


def _child_index(kind: str) -> Callable[..., Any]:
    """What the cache keeps of one owned child: Deployments a status summary, the rest their spec hash."""

    async def index(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        key = (namespace, labels[L.WORKFLOW_LABEL])
        if kind == "Deployment":
            return {key: summarize_deployment(body)}
        digest = (body.metadata.annotations or {}).get(L.HASH_ANNOTATION, "")
        return {key: ExistingChild(kind, body.metadata.name or "", digest)}

    return index


async def _pod_index(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    p = pending_pod(body)
    return {(namespace, labels[L.WORKFLOW_LABEL]): p} if p is not None else {}


async def _event_index(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """FailedMount Events naming a missing Secret, by namespace (an Event names a pod, not its workflow)."""
    m = missing_secret(body)
    return {m.namespace: m} if m is not None else {}


# ---------------------------------------------------------------------------------------------- events


async def _workflow_event(type: str, namespace: str, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Every event of a workflow: create, update, resume after a restart, delete.

    Reconciles are level-triggered on metadata.generation and run on the workflow controller's work queue
    (with its own retries and backoff), so the many status-only events cost a dictionary lookup and nothing
    is written to the workflow but its status.
    """
    ctl = _controller(memo, kwargs)
    if type == "DELETED":
        ctl.forget((namespace, name))
    else:
        ctl.schedule((namespace, name))


async def _child_event(
    type: str, namespace: str, labels: Mapping[str, str], body: kopf.Body, memo: kopf.Memo, **kw: Any
) -> None:
    """A child changed: put back what was deleted or edited by hand, and refresh the parent's status."""
    ctl = _controller(memo, kw)
    key = (namespace, labels.get(L.WORKFLOW_LABEL, ""))
    if type == "DELETED":
        ctl.child_gone(key, (str(body.get("kind", "")), str(body.metadata.name or "")))
        ctl.schedule(key, force=True)  # finds nothing to do when the spec no longer wants it
    else:
        ctl.check_drift(key, body)
    ctl.request_refresh(key)


async def _pod_event(namespace: str, labels: Mapping[str, str], memo: kopf.Memo, **kw: Any) -> None:
    """An unscheduled pod appeared or left that state: only status cares."""
    ctl = _controller(memo, kw)
    ctl.request_refresh((namespace, labels.get(L.WORKFLOW_LABEL, "")))


async def _mount_event(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    """The kubelet cannot mount a Secret into a pod: refresh its namespace's workflows (status decides)."""
    m = missing_secret(body)
    if m is None:
        return
    ctl = _controller(memo, kw)
    for key in ctl.cache.workflow_keys():
        if key[0] == m.namespace and m.pod.startswith(f"{key[1]}-"):
            ctl.request_refresh(key)


kopf.index(*kinds.WORKFLOW.resource, id=kinds.WORKFLOW.index_id)(_workflow_index)
kopf.on.event(*kinds.WORKFLOW.resource, id="workflow_event")(_workflow_event)
for _kind in kinds.OWNED:
    kopf.index(*_kind.resource, labels=OWNED_LABELS, id=_kind.index_id)(_child_index(_kind.kind))
    kopf.on.event(*_kind.resource, labels=OWNED_LABELS, id=f"{_kind.plural}_event")(_child_event)
kopf.index(*kinds.POD.resource, labels=OWNED_LABELS, id=kinds.POD.index_id)(_pod_index)
kopf.on.event(*kinds.POD.resource, labels=OWNED_LABELS, id="pod_event")(_pod_event)
kopf.index(*kinds.EVENT.resource, id=kinds.EVENT.index_id)(_event_index)
kopf.on.event(*kinds.EVENT.resource, id="event_event")(_mount_event)
