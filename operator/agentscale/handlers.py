"""kopf registration only: events in, calls into agentscale.runtime out."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf

from agentscale.api import models as m
from agentscale.kube import KubeClient
from agentscale.reconcile import ExistingChild
from agentscale.render import labels as L
from agentscale.runtime import Operator
from agentscale.status import pending_pod, summarize_deployment

OWNED: dict[str, Any] = {
    "app.kubernetes.io/managed-by": L.MANAGED_BY,
    L.WORKFLOW_LABEL: kopf.PRESENT,
}
WORKFLOWS = (m.GROUP, m.VERSION, m.PLURAL)


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
    owned = f"app.kubernetes.io/managed-by={L.MANAGED_BY},{L.WORKFLOW_LABEL}"
    for plural in (
        "deployments",
        "services",
        "configmaps",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    ):
        settings.watching.label_selectors[plural] = owned
    settings.watching.label_selectors["pods"] = owned
    settings.watching.field_selectors["pods"] = "spec.nodeName=,status.phase=Pending"
    client = KubeClient.from_connection(_login(settings), L.FIELD_MANAGER, limit=64)
    memo.op = Operator(client, debounce=float(os.environ.get("AGENTSCALE_STATUS_DEBOUNCE", "0.5")))
    memo.op.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.op.stop()


# ---------------------------------------------------------------------------------------------- indexes


@kopf.index(*WORKFLOWS)
async def workflows_idx(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {
        (namespace, name): {
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
            "generation": body.metadata.get("generation") or 0,
            "uid": body.metadata.uid,
            "deleting": bool(body.metadata.get("deletionTimestamp")),
        }
    }


@kopf.index("apps", "v1", "deployments", labels=OWNED)
async def deployments_idx(
    namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels[L.WORKFLOW_LABEL]): summarize_deployment(body)}


def _child(kind: str) -> Any:
    async def index(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        digest = (body.metadata.annotations or {}).get(L.HASH_ANNOTATION, "")
        return {(namespace, labels[L.WORKFLOW_LABEL]): ExistingChild(kind, body.metadata.name or "", digest)}

    return index


# Spec hashes of the other owned kinds, so a no-op reconcile compares and writes nothing.
kopf.index("", "v1", "configmaps", labels=OWNED, id="configmaps_idx")(_child("ConfigMap"))
kopf.index("", "v1", "services", labels=OWNED, id="services_idx")(_child("Service"))
kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=OWNED, id="hpas_idx")(
    _child("HorizontalPodAutoscaler")
)
kopf.index("policy", "v1", "poddisruptionbudgets", labels=OWNED, id="pdbs_idx")(_child("PodDisruptionBudget"))


@kopf.index("", "v1", "pods", labels=OWNED)
async def pods_idx(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
    p = pending_pod(body)
    return {(namespace, labels[L.WORKFLOW_LABEL]): p} if p is not None else {}


# ---------------------------------------------------------------------------------------------- reconcile


@kopf.on.event(*WORKFLOWS)
async def workflow_event(type: str, namespace: str, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Every event of a workflow: create, update, resume after a restart, delete.

    Reconciles are level-triggered on metadata.generation and run on the operator's own work queue (with
    retries and backoff), so the many status-only events cost a dictionary lookup and nothing is written
    to the workflow but its status.
    """
    op: Operator = memo.op
    op.bind(kwargs)
    if type == "DELETED":
        op.forget((namespace, name))
    else:
        op.schedule((namespace, name))


async def _child_event(
    type: str, namespace: str, labels: Mapping[str, str], memo: kopf.Memo, **kw: Any
) -> None:
    """A child changed: refresh the parent's status; a child deleted may need putting back."""
    op: Operator = memo.op
    op.bind(kw)
    key = (namespace, labels.get(L.WORKFLOW_LABEL, ""))
    if type == "DELETED":
        op.schedule(key, force=True)  # finds nothing to do when the spec no longer wants it
    op.request_refresh(key)


async def _pod_event(namespace: str, labels: Mapping[str, str], memo: kopf.Memo, **kw: Any) -> None:
    """An unscheduled pod appeared or left that state: only status cares."""
    op: Operator = memo.op
    op.bind(kw)
    op.request_refresh((namespace, labels.get(L.WORKFLOW_LABEL, "")))


kopf.on.event("apps", "v1", "deployments", labels=OWNED, id="deployment_event")(_child_event)
kopf.on.event("", "v1", "pods", labels=OWNED, id="pod_event")(_pod_event)
for _group, _version, _plural in (
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
):
    kopf.on.event(_group, _version, _plural, labels=OWNED, id=f"{_plural}_event")(_child_event)
