"""An in-memory view over kopf's indexes: what the API server says, by workflow.

kopf keeps one index per watched kind (registered in ``handlers.py`` from ``kinds.py``); handlers hand them to
``bind``. Every loop that needs cluster state (the workflow controller today, the resource controller next)
reads it through this one view instead of listing from the API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentscale import kinds
from agentscale.reconcile import ExistingChild
from agentscale.render import ChildKey
from agentscale.status import DeploymentSummary, PendingPod

Key = tuple[str, str]  # (namespace, workflow name)


class ClusterCache:
    def __init__(self) -> None:
        self.indexes: dict[str, Any] = {}

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
