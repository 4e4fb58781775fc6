"""The Python half of ``make demo`` (scripts/demo.sh starts the cluster, installs the operator and applies the
workflows).

1. With the real node (DEMO_MODE=pods): applies shop-recs with its real-node override and its gateway tokens
   Secret (demo_pods.py).
2. Waits until the three example AgentWorkflows in the demo namespace are Ready and shows where their pods
   (and GPUs) landed, node by node: shop-recs on the real node, the other two on the kwok GPU pool.
3. Puts shop-recs under an open-loop load (DEMO_RPS for DEMO_SECONDS), a line every 5 s and a summary:
   from a load pod in the cluster (demo_pods.py), or, in the fallback (DEMO_MODE=local, no real node; demo.sh
   says why in DEMO_FALLBACK_REASON), against shop-recs' data plane as local processes (demo_local.py).

Env (set by demo.sh): DEMO_KUBECTL, DEMO_NAMESPACE, DEMO_RUN_DIR, DEMO_SECONDS, DEMO_RPS, DEMO_MODE,
DEMO_FALLBACK_REASON, KUBECONFIG.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import defaultdict
from typing import Any

from demo_common import NS, RUN, kjson, kubectl, ready_status, say

MODE = os.environ.get("DEMO_MODE", "pods")
READY_TIMEOUT_S = 300 if MODE == "pods" else 180
GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb")


# --- 1. the cluster side ---------------------------------------------------------------------------


def wait_workflows_ready() -> None:
    end = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while True:
        items = kjson("get", "aw", "-n", NS)["items"]
        states = {i["metadata"]["name"]: ready_status(i) for i in items}
        line = ", ".join(f"{n}={s}({r})" for n, (s, r) in sorted(states.items()))
        if line != last:
            say(f"Ready: {line}")
            last = line
        if len(states) >= 3 and all(s == "True" for s, _ in states.values()):
            return
        if time.monotonic() > end:
            say(kubectl("get", "aw", "-n", NS))
            say(kubectl("get", "pods", "-n", NS, "-o", "wide", "--field-selector", "status.phase!=Running"))
            raise TimeoutError(f"workflows not Ready within {READY_TIMEOUT_S}s; see {RUN}/")
        time.sleep(2)


def show_cluster() -> None:
    say("$ kubectl get aw -n demo")
    for line in kubectl("get", "aw", "-n", NS).rstrip().splitlines():
        say("  " + line)
    pods = kjson("get", "pods", "-n", NS)["items"]
    nodes = {n["metadata"]["name"]: n for n in kjson("get", "nodes")["items"]}
    per_node: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"pods": 0, "gpu": 0, "parts": defaultdict(int)}
    )
    for p in pods:
        node = p["spec"].get("nodeName") or "(pending)"
        entry = per_node[node]
        entry["pods"] += 1
        for c in p["spec"]["containers"]:
            limits = (c.get("resources") or {}).get("limits") or {}
            entry["gpu"] += sum(int(limits.get(r, 0)) for r in GPU_RESOURCES)
        labels = p["metadata"].get("labels") or {}
        part = labels.get("agentscale.io/step") or labels.get("agentscale.io/model") or "gateway"
        entry["parts"][f"{labels.get('agentscale.io/workflow', '?')}/{part}"] += 1
    say("")
    say(f"$ kubectl get pods -n demo -o wide, by node ({len(pods)} pods)")
    for node in sorted(per_node):
        entry = per_node[node]
        n = nodes.get(node, {})
        pool = (n.get("metadata", {}).get("labels") or {}).get("agentscale.io/pool", "-")
        cap = n.get("status", {}).get("allocatable", {})
        gpu_cap = sum(int(cap.get(r, 0)) for r in GPU_RESOURCES)
        gpus = f"{entry['gpu']}/{gpu_cap} GPU" if gpu_cap else "no GPU"
        parts = " ".join(f"{k}(x{v})" if v > 1 else k for k, v in sorted(entry["parts"].items()))
        say(f"  {node:<11} {pool:<9} {entry['pods']:>2} pods  {gpus:<10} {parts}")


# --- main ---------------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # when run by hand; demo.sh sends SIGTERM
    if MODE == "pods":
        from demo_pods import apply_shop_recs, run_pods

        apply_shop_recs()
    say(f"waiting for the example workflows to be Ready (up to {READY_TIMEOUT_S}s)")
    t = time.monotonic()
    wait_workflows_ready()
    say(f"all Ready {time.monotonic() - t:.0f}s after the wait began")
    show_cluster()
    if MODE == "pods":
        return run_pods()
    from demo_local import run_local

    say(f"FALLBACK (no real node): {os.environ.get('DEMO_FALLBACK_REASON') or 'DEMO_MODE=local'}")
    return run_local()


if __name__ == "__main__":
    sys.exit(main())
