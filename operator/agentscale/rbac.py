"""The operator's RBAC rules, derived from the table of kinds (``kinds.py``) and the calls the code makes.

The Helm chart's ClusterRole and Role read their rules from ``charts/agentscale/files/*-rules.yaml``, which
are this module's output; ``operator/tests/test_chart.py`` fails when they drift. After adding a kind to
``kinds.OWNED`` (or a call below), regenerate them:

    .venv/bin/python -m agentscale.rbac --write charts/agentscale/files

Each verb is here for one call in the code, named next to it. Nothing grants Secrets, and no rule uses
a wildcard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from agentscale import kinds

RULES_DIR = Path("charts/agentscale/files")

# Owned children: server-side apply is a PATCH that creates what is missing, so the API server checks
# both patch and create (kube.KubeClient.apply); delete prunes what the spec no longer wants
# (reconcile.py); list + watch feed kopf's indexes and event handlers (handlers.py).
OWNED_VERBS = ("create", "delete", "list", "patch", "watch")
# Workflows are read through kopf's index and event handler (list + watch), and one GET confirms a workflow
# still exists before its deleted children are created again (workflow_controller._still_there); the
# operator writes only their status (kube.KubeClient.patch_status, a merge patch on the status subresource).
WORKFLOW_VERBS = ("get", "list", "watch")
WORKFLOW_STATUS_VERBS = ("patch",)
# The resource controller sets replicas of queue/slo parts through the scale subresource
# (kube.KubeClient.scale, a server-side apply: a PATCH), never by re-applying the Deployment.
SCALE_VERBS = ("patch",)
# Unscheduled pods of our children: kopf's index and event handler (list + watch); never written.
POD_VERBS = ("list", "watch")
# GPU rebalancing (resource_controller/rebalance_actuator.py): it lists every pod (kube.KubeClient.list,
# covered by POD_VERBS' list) and node to see where GPUs are free, evicts a pod through the eviction
# subresource (kube.KubeClient.evict: a create of a policy/v1 Eviction, which the API server refuses while a
# PodDisruptionBudget allows no disruption), and nominates the pending pod to the node it frees
# (kube.KubeClient.patch_status on pods/status: status.nominatedNodeName, as the scheduler's preemption does).
# PodDisruptionBudgets are read with the owned kinds' list.
NODE_VERBS = ("list",)
# Right-sizing (resource_controller/rightsize_actuator.py) lists pods (POD_VERBS' list) and resizes a running
# pod's requests in place through the resize subresource (kube.KubeClient.resize: a PATCH).
RESIZE_VERBS = ("patch",)
EVICTION_VERBS = ("create",)
POD_STATUS_VERBS = ("patch",)
# Events: kube.KubeClient.post_event, and kopf's own posting of handler warnings and errors (create); the
# kubelet's FailedMount Events, for GatewayTokensMissing: kopf's index and event handler (list + watch).
EVENT_VERBS = ("create", "list", "watch")
# kopf itself (kopf/_core/reactor/observation.py, resource_observer) watches CRDs to notice API
# resources appearing or changing at runtime; without list + watch it logs a warning and only
# scans at start. The operator runs cluster-wide and with --standalone, so kopf neither lists
# namespaces nor touches its peering resources (kopfpeerings, clusterkopfpeerings).
CRD_RESOURCE = ("apiextensions.k8s.io", "customresourcedefinitions")
CRD_VERBS = ("list", "watch")

# The resource controller's leader election Lease, in the operator's own namespace only (a Role, not the
# ClusterRole): resource_controller/leader.py reads it (kube.KubeClient.get), creates it when absent
# (kube.KubeClient.create) and renews, takes over and releases it with a resourceVersion-checked replace
# (kube.KubeClient.replace). kopf's own handlers still run with --standalone (no kopf peering).
LEASE_VERBS = ("create", "get", "update")


def _rule(group: str, resource: str, verbs: tuple[str, ...]) -> dict[str, Any]:
    return {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs)}


def cluster_rules() -> list[dict[str, Any]]:
    """The ClusterRole rules: one rule per resource, owned kinds first in apply order."""
    rules = [_rule(k.group, k.plural, OWNED_VERBS) for k in kinds.OWNED]
    deployments = kinds.owned("Deployment")
    rules.append(_rule(deployments.group, f"{deployments.plural}/scale", SCALE_VERBS))
    rules.append(_rule(kinds.WORKFLOW.group, kinds.WORKFLOW.plural, WORKFLOW_VERBS))
    rules.append(_rule(kinds.WORKFLOW.group, f"{kinds.WORKFLOW.plural}/status", WORKFLOW_STATUS_VERBS))
    rules.append(_rule(kinds.POD.group, kinds.POD.plural, POD_VERBS))
    rules.append(_rule(kinds.POD.group, f"{kinds.POD.plural}/eviction", EVICTION_VERBS))
    rules.append(_rule(kinds.POD.group, f"{kinds.POD.plural}/status", POD_STATUS_VERBS))
    rules.append(_rule(kinds.POD.group, f"{kinds.POD.plural}/resize", RESIZE_VERBS))
    rules.append(_rule(kinds.NODE.group, kinds.NODE.plural, NODE_VERBS))
    rules.append(_rule(kinds.EVENT.group, kinds.EVENT.plural, EVENT_VERBS))
    rules.append(_rule(*CRD_RESOURCE, CRD_VERBS))
    return rules


def namespace_rules() -> list[dict[str, Any]]:
    """The Role rules in the operator's own namespace."""
    return [_rule(kinds.LEASE.group, kinds.LEASE.plural, LEASE_VERBS)]


def rendered_files() -> dict[str, str]:
    """File name -> YAML text of the rules files the chart reads (a list of rules each)."""
    header = (
        "# Generated from operator/agentscale/rbac.py and kinds.py; do not edit. Regenerate with\n"
        f"#   .venv/bin/python -m agentscale.rbac --write {RULES_DIR}\n"
    )
    out = {}
    for name, rules in (("clusterrole-rules.yaml", cluster_rules()), ("role-rules.yaml", namespace_rules())):
        out[name] = header + yaml.safe_dump(rules, sort_keys=False, default_flow_style=None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentscale.rbac", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write", metavar="DIR", help=f"write the rules files into DIR (the chart: {RULES_DIR})"
    )
    args = parser.parse_args(argv)
    for name, text in rendered_files().items():
        if args.write:
            path = Path(args.write) / name
            path.write_text(text)
            print(f"wrote {path}")
        else:
            sys.stdout.write(f"# --- {name}\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
