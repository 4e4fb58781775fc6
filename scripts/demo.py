"""The Python half of ``make demo`` (scripts/demo.sh starts the cluster, the operator and the workflows).

1. Waits until the three example AgentWorkflows in the demo namespace are Ready and shows where their pods
   (and GPUs) landed on the kwok nodes.
2. kwok never runs containers, so it runs shop-recs' real data plane here: redis-server, tritonserver (the
   nvidia-pytriton wheel, CPU) serving workloads/models with the config.pbtxt the operator renders, and the
   step workers and the gateway as local processes with the AGENTSCALE_* environment of the Deployments the
   operator created (only addresses are replaced by loopback ones).
3. Drives the gateway's sync-run endpoint with an open-loop load (DEMO_RPS for DEMO_SECONDS), prints a line
   every 5 s and a summary, then stops every process it started.

Modules: this one (the cluster side, the local data plane, main), demo_load.py (the load, the live lines,
the summary), demo_common.py (settings, kubectl, say).

Env (set by demo.sh): DEMO_KUBECTL, DEMO_NAMESPACE, DEMO_RUN_DIR, DEMO_SECONDS, DEMO_RPS, KUBECONFIG.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

import yaml
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import parse_spec
from agentscale.render.triton import config_pbtxt
from agentscale_harness.local import RedisServer, TritonServer, free_port
from demo_common import NS, ROOT, RPS, RUN, SECONDS, WORKFLOW, Proc, kjson, kubectl, ready_status, say
from demo_load import REPORT_EVERY_S, Load, run_load, summary

from bench.dataplane.stack import Stack, wait_http

EXAMPLE = ROOT / "workloads" / "examples" / "recommendation.yaml"
READY_TIMEOUT_S = 180
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
            raise TimeoutError(f"workflows not Ready within {READY_TIMEOUT_S}s; see {RUN}/operator.log")
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


# --- 2. shop-recs' data plane, locally ----------------------------------------------------------------


def example_workflow() -> AgentWorkflow:
    doc = yaml.safe_load(EXAMPLE.read_text())
    meta = {"name": doc["metadata"]["name"], "namespace": NS}
    return AgentWorkflow(metadata=meta, spec=parse_spec(doc["spec"]))


def triton_configs(wf: AgentWorkflow) -> dict[str, str]:
    """config.pbtxt per model: agentscale.render.triton.config_pbtxt of the example, checked against the
    ConfigMaps the operator created. The only change: KIND_GPU -> KIND_CPU (this machine has no GPU)."""
    live = {}
    for cm in kjson("get", "configmap", "-n", NS, "-l", f"agentscale.io/workflow={WORKFLOW}")["items"]:
        if "config.pbtxt" in (cm.get("data") or {}):
            live[cm["metadata"]["labels"].get("agentscale.io/model", "")] = cm["data"]["config.pbtxt"]
    out = {}
    for model in wf.spec.models:
        text = config_pbtxt(model)
        same = "identical to" if live.get(model.name) == text else "DIFFERENT FROM"
        say(f"{model.name}: rendered config.pbtxt {same} the operator's ConfigMap in the cluster")
        cpu = text.replace("kind: KIND_GPU", "kind: KIND_CPU")
        if cpu != text:
            say(f"{model.name}: instance_group kind KIND_GPU -> KIND_CPU for this GPU-less machine")
        out[model.name] = cpu
    (RUN / "triton-configs.txt").write_text("\n".join(f"# {k}\n{v}" for k, v in out.items()))
    return out


def container_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[e["name"]] = NS
    return env


def rendered_processes(redis: RedisServer, triton: TritonServer) -> list[Proc]:
    """One local process per step and one gateway, with the env of the Deployments the operator created."""
    deployments = kjson("get", "deploy", "-n", NS, "-l", f"agentscale.io/workflow={WORKFLOW}")["items"]
    procs = []
    for d in sorted(deployments, key=lambda d: d["metadata"]["name"]):
        labels = d["metadata"]["labels"]
        component = labels.get("agentscale.io/component")
        if component not in ("step", "gateway"):
            continue
        container = d["spec"]["template"]["spec"]["containers"][0]
        replicas = int((d.get("status") or {}).get("readyReplicas") or 0)
        env = container_env(container)
        # Addresses only: loopback Redis and Triton, and a metrics port of its own per local process.
        port = free_port()
        env["AGENTSCALE_REDIS_URL"] = redis.url
        env["AGENTSCALE_METRICS_PORT"] = str(port)
        if env.get("AGENTSCALE_TRITON_HOST"):
            env["AGENTSCALE_TRITON_HOST"] = "127.0.0.1"
            env["AGENTSCALE_TRITON_GRPC_PORT"] = str(triton.grpc_port)
        if component == "gateway":
            # The cluster's pods mount the tokens Secret there; this local demo gateway runs open instead.
            env.pop("AGENTSCALE_GATEWAY_TOKENS_DIR", None)
            procs.append(Proc("gateway", ["gateway"], env, port, replicas))
        else:
            step = labels["agentscale.io/step"]
            args = container["command"][1:] + list(container.get("args") or [])
            procs.append(Proc(f"step-{step}", args, env, port, replicas))
    return procs


# --- main ---------------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # when run by hand; demo.sh sends SIGTERM
    say(f"waiting for the example workflows to be Ready (up to {READY_TIMEOUT_S}s)")
    wait_workflows_ready()
    show_cluster()

    print(f"\n=== [{time.strftime('%H:%M:%S')}] {WORKFLOW}'s data plane as local processes", flush=True)
    for sub in ("redis", "triton"):
        shutil.rmtree(RUN / sub, ignore_errors=True)
    for old in RUN.glob("*.log"):
        if old.name != "operator.log":
            old.unlink()
    wf = example_workflow()
    configs = triton_configs(wf)
    redis = RedisServer(RUN / "redis", appendfsync="everysec")
    triton = TritonServer(RUN / "triton", models=sorted(configs), config_overrides=configs)
    stack = Stack(RUN)
    try:
        redis.start()
        say(f"redis-server   127.0.0.1:{redis.port}  (log {RUN}/redis/redis.log)")
        t = time.monotonic()
        triton.start(ready_timeout_s=180)
        say(
            f"tritonserver   grpc 127.0.0.1:{triton.grpc_port} http :{triton.http_port} "
            f"metrics :{triton.metrics_port}, models {', '.join(sorted(configs))} ready in "
            f"{time.monotonic() - t:.1f}s (log {RUN}/triton/triton.log)"
        )
        procs = rendered_processes(redis, triton)
        gateway_url = ""
        for p in procs:
            if p.name == "gateway":
                gport = free_port()
                stack.spawn(["gateway", "--port", str(gport)], p.env, p.name)
                gateway_url = f"http://127.0.0.1:{gport}"
                wait_http(gateway_url + "/readyz", 60)
            else:
                stack.spawn(p.args, p.env, p.name)
            wait_http(f"http://127.0.0.1:{p.metrics_port}/healthz", 60)
            where = gateway_url if p.name == "gateway" else f"handler {p.args[-1]}"
            say(f"{p.name:<14} {where}  metrics :{p.metrics_port}  ({p.replicas} in cluster, 1 here)")
        say("env from the operator's Deployments; replaced: AGENTSCALE_REDIS_URL, AGENTSCALE_TRITON_HOST/")
        say("_GRPC_PORT/_HTTP_PORT (loopback), AGENTSCALE_METRICS_PORT (one port per local process);")
        say("dropped: AGENTSCALE_GATEWAY_TOKENS_DIR (no Secret mounted here: the local gateway runs open)")
        body = json.dumps({"input": {"query": "wireless noise cancelling headphones"}}).encode()
        req = urllib.request.Request(
            gateway_url + "/v1/runs/sync", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            res = json.loads(r.read())
        items = res["output"]["rank"]["items"][:3]
        say(
            f"smoke run {res['run_id']}: {res['status']} in {res['latency_ms']:.0f} ms, top items "
            + ", ".join(f"#{i['id']} ({i['score']:.3f})" for i in items)
        )

        print(
            f"\n=== [{time.strftime('%H:%M:%S')}] open-loop load: {RPS:g} req/s for {SECONDS:g}s "
            f"-> POST {gateway_url}/v1/runs/sync (line every {REPORT_EVERY_S:g}s)",
            flush=True,
        )
        steps = {p.name.removeprefix("step-"): p.metrics_port for p in procs if p.name != "gateway"}
        load = Load(gateway_url, steps)
        wall = asyncio.run(run_load(load))
        summary(load, wall, triton.metrics_port, procs)
        bad = load.total.errors + load.total.dropped
        return 0 if load.total.ok and bad <= 0.01 * max(1, load.total.sent) else 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"\n=== [{time.strftime('%H:%M:%S')}] stopping the local data plane", flush=True)
        stack.stop()
        triton.stop()
        redis.stop()
        say(f"logs: {RUN}/ (gateway.log, step-*.log, triton/triton.log, redis/redis.log, operator.log)")


if __name__ == "__main__":
    sys.exit(main())
