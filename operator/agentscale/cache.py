"""An in-memory view over kopf's indexes: what the API server says, by workflow.

kopf keeps one index per watched kind (registered in ``handlers.py`` from ``kinds.py``); handlers hand them to
``bind``. Every loop that needs cluster state (the workflow controller today, the resource controller next)
reads it through this one view instead of listing from the API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentscale import kinds
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import InvalidSpec, parse_spec
from agentscale.reconcile import ExistingChild
from agentscale.render import ChildKey
from agentscale.status import DeploymentSummary, MissingSecret, PendingPod

Key = tuple[str, str]  # (namespace, workflow name)


@dataclass(frozen=True)
class Parsed:
    """One generation of a workflow's spec, validated once for every loop that reads it."""

    uid: str
    generation: int
    workflow: AgentWorkflow | None  # None when the spec is invalid
    problems: list[str] = field(default_factory=list)


class ClusterCache:
    def __init__(self) -> None:
        self.indexes: dict[str, Any] = {}
        self._parsed: dict[Key, Parsed] = {}

    def parsed(self, key: Key, record: Mapping[str, Any]) -> Parsed:
        """The workflow's spec as the typed model (or the problems that make it invalid), parsed once per
        generation and shared by the workflow controller and the resource controller."""
        uid, generation = str(record["uid"]), int(record["generation"])
        have = self._parsed.get(key)
        if have is not None and have.uid == uid and have.generation == generation:
            return have
        try:
            spec = parse_spec(record["spec"], name=key[1])
        except InvalidSpec as exc:
            out = Parsed(uid, generation, None, list(exc.problems))
        else:
            out = Parsed(
                uid, generation, AgentWorkflow(metadata={"name": key[1], "namespace": key[0]}, spec=spec)
            )
        self._parsed[key] = out
        return out

    def forget(self, key: Key) -> None:
        """A workflow is gone: drop what was derived from it."""
        self._parsed.pop(key, None)

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        """Keep the kopf indexes among a handler's keyword arguments (they are live, bound once)."""
        for name, value in kwargs.items():
            if name.endswith("_idx") and name not in self.indexes:
                self.indexes[name] = value

    def _values(self, index: str, key: Key) -> Iterable[Any]:
        idx = self.indexes.get(index)
        if idx is None or key not in idx:
            return ()
        return list(idx[key])

    def workflow_record(self, key: Key) -> Mapping[str, Any] | None:
        """spec, status, generation, uid and deleting of one workflow, or None if unknown."""
        for record in self._values(kinds.WORKFLOW.index_id, key):
            return record  # type: ignore[no-any-return]
        return None

    def workflow_keys(self) -> list[Key]:
        idx = self.indexes.get(kinds.WORKFLOW.index_id)
        return list(idx.keys()) if idx is not None else []

    def existing_children(self, key: Key) -> dict[ChildKey, ExistingChild]:
        out: dict[ChildKey, ExistingChild] = {}
        for kind in kinds.OWNED:
            for c in self._values(kind.index_id, key):
                if isinstance(c, DeploymentSummary):
                    c = ExistingChild(kind.kind, c.name, c.spec_hash, c.desired)
                out[(c.kind, c.name)] = c
        return out

    def deployments(self, key: Key) -> list[DeploymentSummary]:
        return list(self._values(kinds.owned("Deployment").index_id, key))

    def pending(self, key: Key) -> list[PendingPod]:
        return list(self._values(kinds.POD.index_id, key))

    def missing_secrets(self, namespace: str) -> list[MissingSecret]:
        """Pods of the namespace the kubelet cannot start for a missing Secret (its FailedMount Events)."""
        idx = self.indexes.get(kinds.EVENT.index_id)
        if idx is None or namespace not in idx:
            return []
        return list(idx[namespace])
