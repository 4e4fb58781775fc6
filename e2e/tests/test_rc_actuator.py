"""The resource controller inside the operator process, against a real API server.

A queue-mode step whose Deployment someone scales below its minimum is brought back into bounds by the
resource controller (its own field manager in managedFields, a Scaled Event, status.lastScalingDecision and
status.scaling["step/<name>"]);
an hpa-mode step of the same workflow is never written by it. The operator here runs without
``AGENTSCALE_PROMETHEUS_URL``, so the controller reads no signals and only clamps (fail static):
docs/architecture.md, "Resource controller"; ``test_rc_signals.py`` runs it against a real Prometheus.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from agentscale.resource_controller.loop import LoopSettings
from operator_support import get_wf, wait_condition, workflow

pytestmark = pytest.mark.cluster

RC_MANAGER = "agentscale-resource-controller"
STEPS = [
    {"name": "q", "scaling": {"mode": "queue", "minReplicas": 2, "maxReplicas": 4}, "next": ["h"]},
    {"name": "h", "scaling": {"mode": "hpa", "minReplicas": 1, "maxReplicas": 3}},
]
# The loop runs every 15 s (AGENTSCALE_RC_CYCLE_SECONDS): a few cycles, generously.
CYCLES = 90


def deployment(kubectl: Any, ns: str, name: str) -> dict[str, Any]:
    return kubectl.json("-n", ns, "get", "deployment", name, "--show-managed-fields")


def managers(dep: dict[str, Any]) -> dict[str, str]:
    """Field manager -> subresource ("" for the main resource) of each managedFields entry."""
    return {m["manager"]: m.get("subresource", "") for m in dep["metadata"].get("managedFields") or []}


def scaled_events(kubectl: Any, ns: str) -> list[dict[str, Any]]:
    items = kubectl.json("-n", ns, "get", "events", "--field-selector", "reason=Scaled")["items"]
    return [e for e in items if e["involvedObject"]["name"] == "rc"]


def test_queue_mode_below_min_is_brought_back_and_hpa_mode_is_never_written(
    kubectl: Any, operator: Any, namespace: str, wait_for: Any
) -> None:
    ns = namespace
    kubectl.apply(workflow("rc", STEPS), namespace=ns)
    # A new queue-mode Deployment starts at the API server's default of 1: the controller raises it to 2.
    wait_for(
        lambda: deployment(kubectl, ns, "rc-q")["spec"]["replicas"] == 2,
        timeout=CYCLES,
        interval=1,
        message="rc-q raised to its minimum of 2 by the resource controller",
    )
    wait_condition(kubectl, wait_for, ns, "rc", "Ready", "True")

    # Someone scales both steps outside their bounds: the hpa step first, then the queue step.
    kubectl("-n", ns, "scale", "deployment/rc-h", "--replicas=5")
    kubectl("-n", ns, "scale", "deployment/rc-q", "--replicas=0")
    wait_for(
        lambda: deployment(kubectl, ns, "rc-q")["spec"]["replicas"] == 2,
        timeout=CYCLES,
        interval=1,
        message="rc-q back to 2 replicas",
    )
    q = deployment(kubectl, ns, "rc-q")
    assert managers(q).get(RC_MANAGER) == "scale", managers(q)

    def decision() -> dict[str, Any] | None:
        last = (get_wf(kubectl, ns, "rc").get("status") or {}).get("lastScalingDecision") or {}
        return last if last.get("fromReplicas") == 0 else None

    last = wait_for(decision, timeout=30, interval=1, message="status.lastScalingDecision for 0 -> 2")
    assert (last["target"], last["toReplicas"]) == ("step/q", 2), last
    assert "bounded to [2, 4]" in last["reason"] and last["time"], last
    # The part's own entry says the same: its desired replicas, the rule and the reason.
    part = get_wf(kubectl, ns, "rc")["status"]["scaling"]["step/q"]
    assert (part["fromReplicas"], part["desired"], part["reason"]) == (0, 2, last["reason"]), part
    assert part["rule"], part

    events = wait_for(
        lambda: [e for e in scaled_events(kubectl, ns) if "0 -> 2" in e["message"]],
        timeout=30,
        interval=1,
        message="a Scaled Event for 0 -> 2",
    )
    assert events[0]["message"].startswith("step/q: ") and events[0]["source"]["component"] == RC_MANAGER
    assert all(e["message"].startswith("step/q: ") for e in scaled_events(kubectl, ns))

    # The hpa step is the HPA's: the resource controller never wrote it, in any cycle since.
    assert RC_MANAGER not in managers(deployment(kubectl, ns, "rc-h"))
    # The workflow controller's own status writes since then kept the controller's key.
    wait_condition(kubectl, wait_for, ns, "rc", "Ready", "True")
    assert get_wf(kubectl, ns, "rc")["status"]["lastScalingDecision"] == last
    assert get_wf(kubectl, ns, "rc")["status"]["scaling"]["step/q"] == part

    # In bounds and without signals, the controller holds: two more cycles write nothing.
    before = (deployment(kubectl, ns, "rc-q")["metadata"]["generation"], len(scaled_events(kubectl, ns)))
    time.sleep(2 * LoopSettings().cycle_s + 5)  # two of the resource controller's cycles, and a margin
    after = (deployment(kubectl, ns, "rc-q")["metadata"]["generation"], len(scaled_events(kubectl, ns)))
    assert after == before
    assert get_wf(kubectl, ns, "rc")["status"]["lastScalingDecision"] == last


def test_the_operator_holds_the_resource_controller_lease(kubectl: Any, operator: Any) -> None:
    # In-cluster (the chart): the release namespace; a local process: "default" (no POD_NAMESPACE, no
    # service account file).
    lease = kubectl.json("-n", operator.lease_namespace, "get", "lease", "agentscale-resource-controller")
    spec = lease["spec"]
    assert spec["holderIdentity"] and spec["leaseDurationSeconds"] == 15
