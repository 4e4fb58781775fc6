"""A missing tokens Secret, from the objects the cluster shows: the gateway pod waits in ContainerCreating
with nothing in its status that names the Secret, and the kubelet posts FailedMount Warning Events that do.

The objects below are what a kubelet 1.34 writes (its volume manager formats the message as
``MountVolume.SetUp failed for volume %q : %v`` around the secret plugin's NotFound error). kwok, which runs
the local cluster's nodes, marks such pods Running and posts no FailedMount (checked on the e2e cluster), so
the logic is tested here, from these objects."""

from __future__ import annotations

from typing import Any

import pytest
from agentscale.api.models import CONDITIONS, AgentWorkflow
from agentscale.api.validation import parse_spec
from agentscale.pending import GATEWAY_TOKENS_MISSING, MissingSecret, gateway_tokens_missing, missing_secret
from agentscale.render.workers import TOKENS_VOLUME
from agentscale.status import ANNOUNCED_CONDITIONS, Observed, compute_status, pending_pod
from conftest import minimal_spec
from test_status import ALL, conds, dep

NS = "ns"


def failed_mount(pod: str, volume: str = TOKENS_VOLUME, secret: str = "wf-gateway-tokens") -> dict[str, Any]:
    """A FailedMount Event as the kubelet posts it (core/v1, source kubelet)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{pod}.1879f2d4c1a5b3e0", "namespace": NS},
        "involvedObject": {"kind": "Pod", "namespace": NS, "name": pod, "apiVersion": "v1", "uid": "u"},
        "reason": "FailedMount",
        "message": f'MountVolume.SetUp failed for volume "{volume}" : secret "{secret}" not found',
        "source": {"component": "kubelet", "host": "node-1"},
        "type": "Warning",
        "count": 7,
        "firstTimestamp": "2026-11-28T12:00:00Z",
        "lastTimestamp": "2026-11-28T12:06:10Z",
    }


# What the same pod's status says meanwhile: scheduled, Pending, ContainerCreating, no word of the Secret.
WAITING_POD: dict[str, Any] = {
    "metadata": {
        "name": "wf-gateway-7d9c8b6f5-x2x4q",
        "namespace": NS,
        "labels": {"agentscale.io/workflow": "wf", "agentscale.io/component": "gateway"},
    },
    "spec": {"nodeName": "node-1", "containers": [{"name": "gateway"}]},
    "status": {
        "phase": "Pending",
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "False"},
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            {"type": "PodScheduled", "status": "True"},
        ],
        "containerStatuses": [
            {"name": "gateway", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
        ],
    },
}

POD = "wf-gateway-7d9c8b6f5-x2x4q"


def wf(**gateway: Any) -> AgentWorkflow:
    spec = minimal_spec(gateway=gateway) if gateway else minimal_spec()
    return AgentWorkflow(metadata={"name": "wf", "namespace": NS}, spec=parse_spec(spec))


def test_the_pod_itself_does_not_name_the_secret() -> None:
    """Why the Events are read: the waiting pod is scheduled, so it is no unschedulable pod, and its status
    has no message at all."""
    assert pending_pod(WAITING_POD) is None
    assert "secret" not in str(WAITING_POD["status"]).lower()


def test_a_failed_mount_event_names_pod_volume_and_secret() -> None:
    found = missing_secret(failed_mount(POD))
    assert found == MissingSecret(
        NS,
        POD,
        TOKENS_VOLUME,
        "wf-gateway-tokens",
        'MountVolume.SetUp failed for volume "gateway-tokens" : secret "wf-gateway-tokens" not found',
    )


@pytest.mark.parametrize(
    "event",
    [
        {**failed_mount(POD), "reason": "Scheduled"},
        {**failed_mount(POD), "involvedObject": {"kind": "Node", "name": "node-1"}},
        # the kubelet's summary after two minutes: names the volume, not the Secret
        {
            **failed_mount(POD),
            "message": "Unable to attach or mount volumes: unmounted volumes=[gateway-tokens], unattached "
            "volumes=[], failed to process volumes=[]: timed out waiting for the condition",
        },
        {
            **failed_mount(POD),
            "message": 'MountVolume.SetUp failed for volume "gateway-tokens" : failed to sync secret cache: '
            "timed out waiting for the condition",
        },
        {"involvedObject": None, "message": None},
    ],
)
def test_other_events_are_not_a_missing_secret(event: dict[str, Any]) -> None:
    assert missing_secret(event) is None


def test_the_message_names_the_secret_and_the_command_that_creates_it() -> None:
    found = [missing_secret(failed_mount(POD)), missing_secret(failed_mount("wf-gateway-7d9c8b6f5-abcde"))]
    msg = gateway_tokens_missing(NS, "wf", "wf-gateway-tokens", TOKENS_VOLUME, [f for f in found if f])
    assert msg.startswith("2 gateway pods cannot start: the Secret 'wf-gateway-tokens'")
    assert "kubectl -n ns create secret generic wf-gateway-tokens --from-literal=client1=" in msg
    assert "spec.gateway.auth.tokensSecret" in msg and "spec.gateway.auth.enabled: false" in msg


@pytest.mark.parametrize(
    ("pod", "secret", "volume", "namespace"),
    [
        ("wf-a-7d9c8b6f5-x2x4q", "wf-gateway-tokens", TOKENS_VOLUME, NS),  # a step's pod
        ("wf-gateway-gateway-7d9c8b6f5-x2x4q", "wf-gateway-tokens", TOKENS_VOLUME, NS),  # workflow wf-gateway
        (POD, "other", TOKENS_VOLUME, NS),  # another Secret (not the tokens)
        (POD, "wf-gateway-tokens", "certs", NS),  # another volume
        (POD, "wf-gateway-tokens", TOKENS_VOLUME, "elsewhere"),  # a same-named workflow elsewhere
    ],
)
def test_only_this_workflows_gateway_and_tokens_count(
    pod: str, secret: str, volume: str, namespace: str
) -> None:
    event = failed_mount(pod, volume, secret)
    event["involvedObject"]["namespace"] = namespace
    found = missing_secret(event)
    assert found is not None
    assert gateway_tokens_missing(NS, "wf", "wf-gateway-tokens", TOKENS_VOLUME, [found]) == ""


def test_status_says_it_while_the_gateway_waits_and_clears_when_it_starts() -> None:
    found = [m for m in [missing_secret(failed_mount(POD))] if m]
    waiting = [d for d in ALL if d.component != "gateway"] + [dep("gateway", "", 1, 0)]
    c = conds(
        compute_status(Observed(generation=2, workflow=wf(), deployments=waiting, missing_secrets=found))
    )
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == GATEWAY_TOKENS_MISSING
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == GATEWAY_TOKENS_MISSING
    assert "kubectl -n ns create secret generic wf-gateway-tokens" in c["Degraded"]["message"]
    assert "Degraded" in ANNOUNCED_CONDITIONS  # so a Warning Event on the workflow says it too
    assert GATEWAY_TOKENS_MISSING in CONDITIONS["Degraded"] and GATEWAY_TOKENS_MISSING in CONDITIONS["Ready"]

    # the Secret was created, the pods started: the kubelet's old Events stay for an hour, the reason goes
    c = conds(compute_status(Observed(generation=2, workflow=wf(), deployments=ALL, missing_secrets=found)))
    assert c["Ready"]["status"] == "True" and c["Degraded"]["status"] == "False"


def test_with_auth_off_or_another_secret_named_the_old_events_do_not_count() -> None:
    found = [m for m in [missing_secret(failed_mount(POD))] if m]
    waiting = [d for d in ALL if d.component != "gateway"] + [dep("gateway", "", 1, 0)]
    for workflow in (wf(auth={"enabled": False}), wf(auth={"tokensSecret": "clients"})):
        c = conds(
            compute_status(
                Observed(generation=2, workflow=workflow, deployments=waiting, missing_secrets=found)
            )
        )
        assert c["Ready"]["reason"] == "ReplicasNotReady" and c["Degraded"]["status"] == "False"
