"""Two operator replicas, one writing, on a real API server: what the chart's two replicas rely on.

Two ``agentscale run`` processes, each with its own identity (``POD_NAME``, as the chart's downward API
sets it) and short lease settings, compete for one Lease in the test's namespace and watch only that
namespace. The session's shared operator is stopped for the test (it would write there too) and started
again afterwards. Checked: only the leader applies and posts Events; SIGKILL of the leader hands the Lease
to the standby after the lease expires; a child deleted while nobody leads stays gone until the new leader
takes over, which then puts back exactly that child (its re-queue of every cached workflow); a workflow
applied after the kill is reconciled by the new leader; no other child is created twice. Run twice: with the
resource controller (which then runs the election) and without it (AGENTSCALE_RC_ENABLED=0: the elector runs
on its own for the workflow controller).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import OWNED_KINDS, REPO, wait_condition, workflow

pytestmark = pytest.mark.cluster

LEASE = "e2e-failover"
LEASE_S, RENEW_S, RETRY_S = 4, 3.0, 0.5
STEPS = [{"name": "a", "model": "m", "next": ["b"]}, {"name": "b"}]
MODELS = [{"name": "m", "modelRepository": "/models"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One operator process as one pod of the chart's Deployment would run it (identity = its pod name)."""

    def __init__(self, name: str, kubeconfig: str, namespace: str, log_dir: Path, rc: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        health = f"http://127.0.0.1:{_free_port()}/healthz"
        env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "PYTHONUNBUFFERED": "1",
            "POD_NAME": name,
            "AGENTSCALE_NAMESPACE": namespace,  # the Lease lives in the test's namespace
            "AGENTSCALE_RC_LEASE_NAME": LEASE,
            "AGENTSCALE_RC_LEASE_DURATION_SECONDS": str(LEASE_S),
            "AGENTSCALE_RC_RENEW_DEADLINE_SECONDS": str(RENEW_S),
            "AGENTSCALE_RC_RETRY_PERIOD_SECONDS": str(RETRY_S),
            "AGENTSCALE_METRICS_PORT": str(_free_port()),
            "AGENTSCALE_STATUS_DEBOUNCE": "0.2",
            "AGENTSCALE_RC_ENABLED": rc,
        }
        health_arg = ["--liveness", health]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentscale.cli", "run", "--standalone", "-n", namespace, *health_arg],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        self._wait_healthy(health)

    def _wait_healthy(self, url: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited early:\n{self.log()[-4000:]}"
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not serve /healthz in 60 s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def applies(self) -> list[str]:
        """The reconciles in which this process applied or pruned something (workflow_controller's line)."""
        return [line for line in self.log().splitlines() if ": applied " in line and ", pruned " in line]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(params=["1", "0"], ids=["rc-on", "rc-off"])
def replicas(
    kubeconfig: str, crd: None, operator: Any, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Replica, Replica]]:
    operator.stop()  # the shared operator watches every namespace: it would be a third writer here
    started: list[Replica] = []
    try:
        for name in ("agentscale-op-a", "agentscale-op-b"):
            started.append(Replica(name, kubeconfig, namespace, tmp_path, rc=request.param))
        yield started[0], started[1]
    finally:
        for r in started:
            r.stop()
        if os.environ.get("AGENTSCALE_E2E_SHOW_LOGS") == "1":
            for r in started:
                print(f"--- {r.name}\n{r.log()[-10000:]}")
        operator.start()


def holder(kubectl: Any, ns: str) -> str:
    proc = kubectl.run("-n", ns, "get", "lease", LEASE, "-o", "jsonpath={.spec.holderIdentity}")
    return proc.stdout.strip() if proc.returncode == 0 else ""


def children(kubectl: Any, ns: str, wf: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> uid of every child of one workflow."""
    items = kubectl.json("-n", ns, "get", OWNED_KINDS, "-l", f"agentscale.io/workflow={wf}")["items"]
    return {(i["kind"], i["metadata"]["name"]): i["metadata"]["uid"] for i in items}


def events(kubectl: Any, ns: str, wf: str, reason: str) -> list[str]:
    items = kubectl.json("-n", ns, "get", "events", "--field-selector", f"involvedObject.name={wf}")["items"]
    return sorted(e["message"] for e in items if e["reason"] == reason)


def test_only_the_leader_writes_and_the_standby_takes_over_after_a_kill(
    kubectl: Any, namespace: str, wait_for: Any, replicas: tuple[Replica, Replica]
) -> None:
    ns = namespace
    by_name = {r.name: r for r in replicas}
    leader_id = wait_for(lambda: holder(kubectl, ns), timeout=30, interval=0.2, message="a Lease holder")
    leader = by_name[leader_id.split("_")[0]]
    standby = next(r for r in replicas if r is not leader)
    assert leader_id.startswith(f"{leader.name}_")  # the identity is the pod name, then a suffix

    # Both watch and cache the workflow; only the leader applies, patches status and posts Events.
    kubectl.apply(workflow("first", STEPS, MODELS), namespace=ns)
    wait_condition(kubectl, wait_for, ns, "first", "Ready", "True", timeout=120)
    before = children(kubectl, ns, "first")
    assert len(before) >= 4, before  # a Deployment per step and model, the model's ConfigMap and Service
    assert events(kubectl, ns, "first", "Reconciled") == [f"Applied {len(before)} objects"]
    assert [line for line in leader.applies() if f"{ns}/first:" in line]
    assert standby.applies() == [], standby.applies()
    assert "leads (lease" not in standby.log()

    # The leader dies without releasing the Lease. A child deleted now has nobody to put it back until the
    # standby takes over: while the Lease still names the dead leader, the child must stay gone.
    leader.kill()
    killed_at = time.monotonic()
    gone = next(k for k in before if k[0] == "ConfigMap")
    kubectl("-n", ns, "delete", gone[0].lower(), gone[1], "--wait=false")

    back_while_nobody_led: list[str] = []

    def taken_over() -> str | None:
        back = gone in children(kubectl, ns, "first")
        now_holding = holder(kubectl, ns)  # read after: a new leader writes the Lease before any child
        if now_holding.startswith(f"{leader.name}_"):
            if back:
                back_while_nobody_led.append(now_holding)
            return None
        return now_holding

    new_id = wait_for(taken_over, timeout=30, interval=0.2, message="the standby to take the Lease")
    took = time.monotonic() - killed_at
    assert back_while_nobody_led == [], "the standby put a child back before it led"
    assert new_id.startswith(f"{standby.name}_"), new_id
    print(f"takeover after SIGKILL: {took:.1f} s (lease {LEASE_S} s, retry {RETRY_S} s)")

    # The new leader's re-queue of every cached workflow puts back exactly the missing child.
    wait_for(lambda: gone in children(kubectl, ns, "first"), timeout=60, message=f"{gone} put back")
    after = children(kubectl, ns, "first")
    assert after.keys() == before.keys()
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {gone}, f"children created again: {changed - {gone}}"
    wait_for(
        lambda: len(events(kubectl, ns, "first", "Reconciled")) == 2, timeout=30, message="a second Event"
    )
    assert events(kubectl, ns, "first", "Reconciled") == sorted(
        ["Applied 1 objects", f"Applied {len(before)} objects"]
    )
    assert "leading: re-queueing" in standby.log()

    # A workflow applied after the kill is reconciled by the new leader, once.
    kubectl.apply(workflow("second", STEPS, MODELS), namespace=ns)
    wait_condition(kubectl, wait_for, ns, "second", "Ready", "True", timeout=120)
    second = children(kubectl, ns, "second")
    assert events(kubectl, ns, "second", "Reconciled") == [f"Applied {len(second)} objects"]
    assert [line for line in standby.applies() if f"{ns}/second:" in line]
    assert not [line for line in leader.applies() if f"{ns}/second:" in line]
    assert children(kubectl, ns, "first") == after  # nothing of the first written again
