"""GPU rebalancing on the kwok GPU pool: a fragmented pool, a Pending 4-GPU pod, the rebalancer frees a node.

The pool is the local cluster's two H100 nodes (8 ``nvidia.com/gpu`` each). The test fragments it:

- workflow ``pins``: two fixed 4-GPU model servers, one pinned to each H100 node (nodeSelector hostname):
  immovable (one replica each, no PodDisruptionBudget);
- workflow ``mover``: a queue-mode 1-GPU model server with one replica on each node (placed there by
  cordoning the other node while it scales), so each node has 3 GPUs free: 6 in all, 4 on none;
- workflow ``big``: a fixed 4-GPU model server: Pending, ``Insufficient nvidia.com/gpu``.

Then:

1. it must wait: ``mover`` runs at its minimum (minReplicas 2, 2 ready), so nothing is evicted over several
   cycles; and while one of its pods is marked not ready, the API server's own Eviction refuses with 429 (its
   PodDisruptionBudget allows no disruption), which is what the rebalancer respects;
2. ``mover``'s minimum drops to 1: the rebalancer evicts exactly one pod (the fewest: one 1-GPU pod frees 4
   on its node), posts a ``Rebalanced`` Event, the replacement schedules on the other node, and the 4-GPU
   pod schedules on the freed node. Throughout, ``mover`` keeps at least its minimum ready replicas and its
   PDB never reports fewer healthy pods than it requires.

kwok pods never run, but they schedule, count against node capacity and turn Ready. The operator runs as a
local process (admin credentials) with ``AGENTSCALE_RC_REBALANCE_HEADROOM=assume``: without Prometheus no
workflow has measured latency, and by default unknown headroom means no rebalancing (unit-tested in
``operator/tests/test_rebalance.py``); a 2 s cycle and a Lease of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentscale_harness.local import free_port
from conftest import OperatorProcess
from operator_support import workflow

pytestmark = pytest.mark.cluster

NODES = ("gpu-h100-0", "gpu-h100-1")
CYCLE_S = 2
HOST = "kubernetes.io/hostname"


def model(name: str, gpus: int, scaling: dict[str, Any], node: str | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {
        "name": name,
        "modelRepository": "/models",
        "gpu": {"count": gpus},
        "scaling": scaling,
    }
    if node:
        m["placement"] = {"nodeSelector": {HOST: node}}
    return m


def wf(name: str, models: list[dict[str, Any]]) -> dict[str, Any]:
    return workflow(name, [{"name": "s", "model": models[0]["name"]}], models)


@pytest.fixture
def rebalancing_operator(
    kubeconfig: str, crd: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OperatorProcess]:
    monkeypatch.setenv("AGENTSCALE_RC_REBALANCE_HEADROOM", "assume")
    monkeypatch.setenv("AGENTSCALE_RC_CYCLE_SECONDS", str(CYCLE_S))
    monkeypatch.setenv("AGENTSCALE_RC_LEASE_NAME", f"rc-rebalance-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("AGENTSCALE_METRICS_PORT", str(free_port()))
    op = OperatorProcess(kubeconfig, tmp_path)
    op.start()
    try:
        yield op
        assert op.alive(), f"the operator process died:\n{op.logs()[-4000:]}"
    finally:
        op.stop()


@pytest.fixture
def uncordon(kubectl: Any) -> Iterator[None]:
    yield
    for n in NODES:
        kubectl("uncordon", n)


def pods(kubectl: Any, ns: str, model_name: str) -> list[dict[str, Any]]:
    items = kubectl.json("-n", ns, "get", "pods", "-l", f"agentscale.io/model={model_name}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def placed(kubectl: Any, ns: str, model_name: str) -> dict[str, str]:
    """Pod name -> node, for the model's pods that are bound."""
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods(kubectl, ns, model_name)}


def ready(p: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])


def free_gpus(kubectl: Any) -> dict[str, int]:
    """GPUs free on each H100 node: allocatable minus what its live pods request (the scheduler's count)."""
    used = dict.fromkeys(NODES, 0)
    for p in kubectl.json("get", "pods", "-A", "--field-selector", "status.phase!=Succeeded")["items"]:
        node = p["spec"].get("nodeName")
        if node in used:
            for c in p["spec"]["containers"]:
                used[node] += int((c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))
    return {n: 8 - u for n, u in used.items()}


def rebalanced_events(kubectl: Any, ns: str) -> list[dict[str, Any]]:
    return kubectl.json("-n", ns, "get", "events", "--field-selector", "reason=Rebalanced")["items"]


def scale_onto(kubectl: Any, wait_for: Any, ns: str, replicas: int, node: str, other: str) -> None:
    """Raise ``mover``'s minimum to ``replicas`` with only ``node`` open, so the new pod lands there."""
    kubectl("cordon", other)
    patch = [{"op": "replace", "path": "/spec/models/0/scaling/minReplicas", "value": replicas}]
    kubectl("-n", ns, "patch", "agentworkflow", "mover", "--type=json", "-p", json.dumps(patch))
    wait_for(
        lambda: (
            sorted(placed(kubectl, ns, "m").values()).count(node) >= 1
            and len([n for n in placed(kubectl, ns, "m").values() if n]) == replicas
        ),
        timeout=60,
        interval=0.5,
        message=f"mover's pod {replicas} bound to {node}",
    )
    kubectl("uncordon", other)


def set_ready(kubectl: Any, ns: str, pod: str, status: str) -> None:
    body = kubectl.json("-n", ns, "get", "pod", pod)
    conds = body["status"]["conditions"]
    for c in conds:
        if c["type"] in ("Ready", "ContainersReady"):
            c["status"] = status
    kubectl(
        "-n", ns, "patch", "pod", pod, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": conds}}),
    )  # fmt: skip


def evict(kubectl: Any, ns: str, pod: str) -> Any:
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}}
    return kubectl.run(
        "create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-", input=json.dumps(body)
    )


class Watch:
    """Every change to ``mover``'s Deployment and PDB, from two ``kubectl get -w`` streams (a watch sees
    each status the API server stores, so no dip between polls is missed): the fewest ready replicas seen,
    and any PDB status with fewer healthy pods than it requires."""

    def __init__(self, kubectl: Any, ns: str) -> None:
        self.min_ready = 99
        self.violations: list[dict[str, Any]] = []
        self.events = {"deployment": 0, "pdb": 0}
        env = {**os.environ, "KUBECONFIG": kubectl.kubeconfig}
        self._procs = {
            kind: subprocess.Popen(
                [kubectl.binary, "-n", ns, "get", kind, "mover-m", "-w", "-o", "json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            for kind in self.events
        }
        self._threads = [threading.Thread(target=self._read, args=(k,), daemon=True) for k in self.events]

    def _read(self, kind: str) -> None:
        out = self._procs[kind].stdout
        assert out is not None
        decoder, buf = json.JSONDecoder(), ""
        for line in out:
            buf += line
            try:
                obj, _ = decoder.raw_decode(buf.strip())
            except ValueError:
                continue
            buf = ""
            self.events[kind] += 1
            st = obj.get("status") or {}
            if kind == "deployment":
                self.min_ready = min(self.min_ready, int(st.get("readyReplicas") or 0))
            elif int(st.get("currentHealthy", 0)) < int(st.get("desiredHealthy", 0)):
                self.violations.append(st)

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(1.0)  # the last changes reach the streams
        for p in self._procs.values():
            p.terminate()
            p.wait(10)
        for t in self._threads:
            t.join(10)


def test_fragmented_pool_rebalanced_for_a_pending_4_gpu_pod(
    kubectl: Any, rebalancing_operator: OperatorProcess, namespace: str, wait_for: Any, uncordon: None
) -> None:
    ns, op = namespace, rebalancing_operator
    fixed = {"mode": "fixed", "replicas": 1}
    kubectl.apply(
        wf("pins", [model("pin0", 4, fixed, NODES[0]), model("pin1", 4, fixed, NODES[1])]), namespace=ns
    )
    wait_for(
        lambda: (
            sorted(placed(kubectl, ns, "pin0").values()) == [NODES[0]]
            and sorted(placed(kubectl, ns, "pin1").values()) == [NODES[1]]
        ),
        timeout=60,
        interval=0.5,
        message="the pinned 4-GPU servers bound, one per node",
    )
    # mover: one 1-GPU pod per node (the other node cordoned while each pod is placed)
    kubectl("cordon", NODES[1])
    kubectl.apply(
        wf("mover", [model("m", 1, {"mode": "queue", "minReplicas": 1, "maxReplicas": 4})]), namespace=ns
    )
    wait_for(lambda: list(placed(kubectl, ns, "m").values()) == [NODES[0]], timeout=60, interval=0.5,
             message="mover's first pod on node 0")  # fmt: skip
    kubectl("uncordon", NODES[1])
    scale_onto(kubectl, wait_for, ns, 2, NODES[1], NODES[0])
    wait_for(
        lambda: (
            kubectl.json("-n", ns, "get", "pdb", "mover-m").get("status", {}).get("disruptionsAllowed") == 1
        ),
        timeout=60,
        interval=0.5,
        message="mover's PDB counts both pods healthy",
    )
    free = free_gpus(kubectl)
    assert free == {NODES[0]: 3, NODES[1]: 3}, f"not the fragmented pool the test means: {free}"

    # big: 4 GPUs, 6 free in all, 4 on no node: Pending for lack of GPUs
    kubectl.apply(wf("big", [model("b", 4, fixed)]), namespace=ns)

    def pending_for_gpus() -> bool:
        ps = pods(kubectl, ns, "b")
        return bool(ps) and any(
            c["type"] == "PodScheduled" and "Insufficient nvidia.com/gpu" in c.get("message", "")
            for c in ps[0]["status"].get("conditions") or []
        )

    wait_for(
        pending_for_gpus, timeout=60, interval=0.5, message="big's pod Pending: Insufficient nvidia.com/gpu"
    )
    before = placed(kubectl, ns, "m")

    # 1. it must wait: mover at its minimum (2 of 2 ready), so no pod may go
    wait_for(lambda: "2 ready, minimum 2" in op.logs(), timeout=60, interval=1,
             message="the rebalancer saying why it waits")  # fmt: skip
    # ...and with one of mover's pods not ready, its PDB allows no disruption: the Eviction API says 429
    victim, other = sorted(before)
    set_ready(kubectl, ns, other, "False")
    try:
        wait_for(
            lambda: kubectl.json("-n", ns, "get", "pdb", "mover-m")["status"].get("disruptionsAllowed") == 0,
            timeout=60,
            interval=0.5,
            message="mover's PDB allows no disruption with a pod not ready",
        )
        refused = evict(kubectl, ns, victim)
        assert refused.returncode != 0, refused.stdout
        assert "(TooManyRequests)" in refused.stderr and "disruption budget" in refused.stderr, (
            refused.stderr
        )  # 429
    finally:
        set_ready(kubectl, ns, other, "True")
    assert placed(kubectl, ns, "m") == before, "a pod moved while mover was at its minimum"
    assert rebalanced_events(kubectl, ns) == []
    assert [n for n in placed(kubectl, ns, "b").values() if n] == []

    # 2. mover may lose one (minimum 1, 2 ready): the rebalancer frees a node for big's pod
    with Watch(kubectl, ns) as watch:
        patch = [{"op": "replace", "path": "/spec/models/0/scaling/minReplicas", "value": 1}]
        kubectl("-n", ns, "patch", "agentworkflow", "mover", "--type=json", "-p", json.dumps(patch))
        big_node = wait_for(
            lambda: next(iter(n for n in placed(kubectl, ns, "b").values() if n), None),
            timeout=120,
            interval=0.5,
            message="big's 4-GPU pod scheduled",
        )
        after = wait_for(
            lambda: (
                (p := {x["metadata"]["name"]: x for x in pods(kubectl, ns, "m")})
                and len(p) == 2
                and all(ready(x) and x["spec"].get("nodeName") for x in p.values())
                and {n: x["spec"]["nodeName"] for n, x in p.items()}
            ),
            timeout=60,
            interval=0.5,
            message="mover back at 2 ready pods",
        )
    events = rebalanced_events(kubectl, ns)
    assert len(events) == 1, [e["message"] for e in events]  # the fewest moves: one
    gone = set(before) - set(after)
    assert len(gone) == 1, (before, after)
    evicted = gone.pop()
    assert evicted in events[0]["message"] and "evicting 1" in events[0]["message"], events[0]["message"]
    assert before[evicted] == big_node, "the pod evicted was not on the node the 4-GPU pod took"
    new = (set(after) - set(before)).pop()
    assert after[new] != big_node, "the replacement went back onto the freed node"
    assert free_gpus(kubectl) == {big_node: 0, next(n for n in NODES if n != big_node): 2}
    assert watch.events["deployment"] > 1 and watch.events["pdb"] > 1, watch.events
    assert watch.min_ready >= 1, watch.min_ready
    assert watch.violations == [], watch.violations
    print(
        f"rebalanced: evicted {evicted} from {big_node}; replacement {new} on {after[new]}; "
        f"mover's ready replicas never below {watch.min_ready} ({watch.events} watch events)"
    )
