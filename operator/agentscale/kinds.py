"""The kinds the operator owns or reads: one table, read everywhere.

Everything that lists kinds derives from here: the kopf indexes and event registrations
(``handlers.py``), the server-side watch selectors, the apply order and prune lookups
(``reconcile.py``), the REST paths (``kube.py``), the cache's ``existing_children``
(``cache.py``), the benchmark's and the e2e suite's lists of watched resources, and the
chart's RBAC rules (checked by a test). Adding an owned kind is one line in ``OWNED``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentscale.api.models import API_VERSION, KIND, PLURAL
from agentscale.render.labels import MANAGED_BY, WORKFLOW_LABEL

# Server-side label selector for every child of any workflow (and their pods).
OWNED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{WORKFLOW_LABEL}"


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    plural: str
    apply_first: bool = False  # applied before the rest (config and addresses before the servers using them)
    # The API server bumps metadata.generation on every spec change (not on status updates), so a drift check
    # can skip hashing the spec: status-heavy kinds (Deployments) then cost a few microseconds per event.
    generation_tracks_spec: bool = False

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def index_id(self) -> str:
        """The kopf index (and handler keyword) holding this kind's children, by workflow."""
        return f"{self.plural}_idx"

    @property
    def resource(self) -> tuple[str, str, str]:
        """(group, version, plural) as kopf's decorators take them."""
        return (self.group, self.version, self.plural)


# Children a workflow owns, in apply order. Each is indexed by (namespace, workflow), watched with
# OWNED_SELECTOR, diffed by spec hash, checked for drift, put back when deleted and pruned when unwanted.
# The ServiceAccount and NetworkPolicies go first so that no pod starts under another identity or unguarded.
OWNED: tuple[Kind, ...] = (
    Kind("ServiceAccount", "v1", "serviceaccounts", apply_first=True),
    Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", apply_first=True),
    Kind("ConfigMap", "v1", "configmaps", apply_first=True),
    Kind("Service", "v1", "services", apply_first=True),
    Kind("Deployment", "apps/v1", "deployments", generation_tracks_spec=True),
    Kind("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers"),
    Kind("PodDisruptionBudget", "policy/v1", "poddisruptionbudgets", generation_tracks_spec=True),
)

WORKFLOW = Kind(KIND, API_VERSION, PLURAL)
# Unscheduled pods of our children (status reports why they wait); watched, never written.
POD = Kind("Pod", "v1", "pods")
POD_FIELD_SELECTOR = "spec.nodeName=,status.phase=Pending"
EVENT = Kind("Event", "v1", "events")
# The kubelet's FailedMount Events of pods (status reads those naming a missing Secret: the gateway's tokens);
# watched with this server-side filter, so no other Event crosses the wire.
FAILED_MOUNT_FIELD_SELECTOR = "reason=FailedMount,involvedObject.kind=Pod"
# The resource controller's leader election Lease, in the operator's namespace (resource_controller/leader).
LEASE = Kind("Lease", "coordination.k8s.io/v1", "leases")

# Nodes: the GPU rebalancer (resource_controller/rebalance_actuator) lists them to see where GPUs are free;
# never watched or written.
NODE = Kind("Node", "v1", "nodes")

ALL: tuple[Kind, ...] = (*OWNED, WORKFLOW, POD, EVENT, LEASE, NODE)
# What the operator writes (children, workflow status, Events): an idle operator sends no write to any of
# them (the e2e idle-minute test and the benchmark count apiserver_request_total over these). The Lease is
# not here: its holder renews it every retry period, idle or not, and that write is the point of a lease.
WRITTEN: tuple[Kind, ...] = (*OWNED, WORKFLOW, EVENT)
_BY_KIND = {k.kind: k for k in ALL}
_BY_API = {(k.api_version, k.kind): k for k in ALL}


def owned(kind: str) -> Kind:
    """The owned kind named ``kind`` (KeyError for anything the operator does not own)."""
    k = _BY_KIND[kind]
    if k not in OWNED:
        raise KeyError(kind)
    return k


def lookup(api_version: str, kind: str) -> Kind:
    return _BY_API[(api_version, kind)]
