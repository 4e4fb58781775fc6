"""The fallback data plane of ``make demo``: shop-recs' data plane as local processes, used only when the
demo cluster's real kubelet node cannot start (scripts/demo.sh names the reason; the pods path is
demo_pods.py).

redis-server, tritonserver (the nvidia-pytriton wheel, CPU) serving workloads/models with the config.pbtxt the
operator renders, and the step workers and the gateway as local processes with the AGENTSCALE_* environment of
the Deployments the operator created (only addresses are replaced by loopback ones). The load and its lines
are demo_load.py's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
import urllib.request
from typing import Any

import yaml
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import parse_spec
from agentscale.render.triton import config_pbtxt
from agentscale_harness.local import RedisServer, TritonServer, free_port
from demo_common import NS, ROOT, RPS, RUN, SECONDS, WORKFLOW, Proc, kjson, say
from demo_load import REPORT_EVERY_S, Load, run_load, summary

from bench.dataplane.stack import Stack, wait_http

EXAMPLE = ROOT / "workloads" / "examples" / "recommendation.yaml"


# --- the environment the operator rendered ----------------------------------------------------------------


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


def run_local() -> int:
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
