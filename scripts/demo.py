"""The Python half of ``make demo`` (scripts/demo.sh starts the cluster, the operator and the workflows).

1. Waits until the three example AgentWorkflows in the demo namespace are Ready and shows where their pods
   (and GPUs) landed on the kwok nodes.
2. kwok never runs containers, so it runs shop-recs' real data plane here: redis-server, tritonserver (the
   nvidia-pytriton wheel, CPU) serving workloads/models with the config.pbtxt the operator renders, and the
   step workers and the gateway as local processes with the AGENTSCALE_* environment of the Deployments the
   operator created (only addresses are replaced by loopback ones).
3. Drives the gateway's sync-run endpoint with an open-loop load (DEMO_RPS for DEMO_SECONDS), prints a line
   every 5 s and a summary, then stops every process it started.

Env (set by demo.sh): DEMO_KUBECTL, DEMO_NAMESPACE, DEMO_RUN_DIR, DEMO_SECONDS, DEMO_RPS, KUBECONFIG.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentscale.api.models import AgentWorkflow  # noqa: E402
from agentscale.api.validation import parse_spec  # noqa: E402
from agentscale.render.triton import config_pbtxt  # noqa: E402
from agentscale_harness.local import RedisServer, TritonServer, free_port  # noqa: E402

from bench.dataplane.stack import Stack, percentile, wait_http  # noqa: E402

KUBECTL = os.environ.get("DEMO_KUBECTL", "kubectl")
NS = os.environ.get("DEMO_NAMESPACE", "demo")
RUN = Path(os.environ.get("DEMO_RUN_DIR", str(ROOT / ".run" / "demo")))
SECONDS = min(900.0, max(5.0, float(os.environ.get("DEMO_SECONDS", "60"))))
RPS = min(2000.0, max(1.0, float(os.environ.get("DEMO_RPS", "100"))))
WORKFLOW = "shop-recs"
EXAMPLE = ROOT / "workloads" / "examples" / "recommendation.yaml"
READY_TIMEOUT_S = 180
REPORT_EVERY_S = 5.0
MAX_INFLIGHT = 2000  # the load generator's own bound; beyond it a request counts as "dropped"
GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb")
QUERIES = [
    "wireless noise cancelling headphones",
    "running shoes for trail",
    "espresso machine with grinder",
    "4k monitor 27 inch",
    "kids bike with training wheels",
    "waterproof hiking jacket",
    "mechanical keyboard brown switches",
    "cast iron skillet",
    "standing desk converter",
    "organic green tea",
]


def say(msg: str = "") -> None:
    print(f"    {msg}" if msg else "", flush=True)


def kubectl(*args: str, timeout: float = 30) -> str:
    out = subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def kjson(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def ready_status(aw: dict[str, Any]) -> tuple[str, str]:
    for c in (aw.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status")), str(c.get("reason") or "")
    return "Unknown", "NoStatusYet"


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


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    metrics_port: int
    replicas: int = 0  # ready replicas of its Deployment in the cluster


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
            env["AGENTSCALE_TRITON_HTTP_PORT"] = str(triton.http_port)
        if component == "gateway":
            procs.append(Proc("gateway", ["gateway"], env, port, replicas))
        else:
            step = labels["agentscale.io/step"]
            args = container["command"][1:] + list(container.get("args") or [])
            procs.append(Proc(f"step-{step}", args, env, port, replicas))
    return procs


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((s.labels, s.value))
    return out


def metric_sum(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    """Sum of the samples of ``name`` with the given labels (the parser names counter samples *_total)."""
    samples = m.get(name) or m.get(name + "_total") or []
    return sum(v for labels, v in samples if all(labels.get(k) == x for k, x in match.items()))


# --- 3. the load ------------------------------------------------------------------------------------


@dataclass
class Window:
    sent: int = 0
    ok: list[float] = field(default_factory=list)
    shed: int = 0
    errors: int = 0
    dropped: int = 0

    def add(self, other: Window) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.shed += other.shed
        self.errors += other.errors
        self.dropped += other.dropped


@dataclass
class Load:
    url: str
    steps: dict[str, int]  # step -> metrics port
    window: Window = field(default_factory=Window)
    total: Window = field(default_factory=Window)
    inflight: int = 0
    max_lag: dict[str, float] = field(default_factory=dict)
    max_pending: dict[str, float] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    ready: str = "?"


async def one(load: Load, session: aiohttp.ClientSession, i: int) -> None:
    body = {"input": {"query": f"{QUERIES[i % len(QUERIES)]} #{i}"}, "timeout_ms": 10_000}
    t = time.perf_counter()
    load.inflight += 1
    try:
        async with session.post(load.url + "/v1/runs/sync", json=body) as r:
            await r.read()
            status = r.status
    except Exception as e:
        status = -1
        if len(load.error_samples) < 5:
            load.error_samples.append(f"{type(e).__name__}: {e}")
    finally:
        load.inflight -= 1
    if status == 200:
        load.window.ok.append((time.perf_counter() - t) * 1000)
    elif status == 429:
        load.window.shed += 1
    else:
        load.window.errors += 1
        if status > 0 and len(load.error_samples) < 5:
            load.error_samples.append(f"HTTP {status}")


async def generate(load: Load, stop: asyncio.Event) -> None:
    """Open loop: request i is due at start + i/RPS whatever the latency of the others."""
    loop = asyncio.get_running_loop()
    conn = aiohttp.TCPConnector(limit=0)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=15)) as session:
        start = loop.time()
        i = 0
        while not stop.is_set():
            due = start + i / RPS
            if due >= start + SECONDS:
                break
            delay = due - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            load.window.sent += 1
            if load.inflight >= MAX_INFLIGHT:
                load.window.dropped += 1
            else:
                task = asyncio.create_task(one(load, session, i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
        if tasks:  # let requests in flight finish (bounded; shorter when interrupted)
            _, late = await asyncio.wait(tasks, timeout=3 if stop.is_set() else 16)
            for task in late:
                task.cancel()


async def ready_condition() -> str:
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "get", "aw", WORKFLOW, "-n", NS, "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        status, reason = ready_status(json.loads(out))
        return f"{status}/{reason}" if status != "True" else "True"
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return "?"


def queue_lags(load: Load) -> dict[str, tuple[float, float]]:
    """Per step: (lag, pending) from the worker's metrics: entries not yet read by the consumer group, and
    read but not acknowledged (being processed). The workers refresh them from XINFO GROUPS every 2 s."""
    lags = {}
    for step, port in load.steps.items():
        try:
            m = scrape(port)
            lag = metric_sum(m, "agentscale_queue_lag", step=step)
            pending = metric_sum(m, "agentscale_queue_pending", step=step)
        except OSError:
            lag = pending = float("nan")
        lags[step] = (lag, pending)
        load.max_lag[step] = max(load.max_lag.get(step, 0.0), lag)
        load.max_pending[step] = max(load.max_pending.get(step, 0.0), pending)
    return lags


async def report(load: Load, done: asyncio.Event) -> None:
    t0 = time.monotonic()
    last = t0
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), REPORT_EVERY_S)
        now = time.monotonic()
        w, load.window = load.window, Window()
        load.total.add(w)
        dt = max(1e-6, now - last)
        last = now
        lags = await asyncio.to_thread(queue_lags, load)
        load.ready = await ready_condition()
        lag = " ".join(f"{s}={lg:.0f}+{pd:.0f}" for s, (lg, pd) in lags.items())
        p50, p95 = percentile(w.ok, 50), percentile(w.ok, 95)
        print(
            f"    [{now - t0:5.1f}s] offered {w.sent / dt:6.1f}/s  achieved {len(w.ok) / dt:6.1f}/s  "
            f"p50 {p50:5.0f} ms  p95 {p95:5.0f} ms  429s {w.shed:3d}  errors {w.errors + w.dropped:3d}  "
            f"queue lag+pending {lag}  Ready={load.ready}",
            flush=True,
        )


async def run_load(load: Load) -> float:
    stop, done = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reporter = asyncio.create_task(report(load, done))
    t0 = time.monotonic()
    try:
        await generate(load, stop)
    finally:
        wall = time.monotonic() - t0
        done.set()
        await reporter
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if stop.is_set():
        say("interrupted: stopping the load early")
    return wall


def summary(load: Load, wall: float, triton_metrics_port: int, procs: list[Proc]) -> None:
    t = load.total
    say("")
    say(f"summary: {WORKFLOW}, open loop at {RPS:g} req/s for {wall:.0f}s")
    say(f"  requests {t.sent}: ok {len(t.ok)}, shed (429) {t.shed}, errors {t.errors}, dropped {t.dropped}")
    say(f"  achieved {len(t.ok) / max(wall, 1e-6):.1f} req/s (offered {t.sent / max(wall, 1e-6):.1f})")
    say(
        f"  latency ms: p50 {percentile(t.ok, 50):.1f}  p95 {percentile(t.ok, 95):.1f}  "
        f"p99 {percentile(t.ok, 99):.1f}  max {max(t.ok, default=float('nan')):.1f}  (SLO p95 150 ms)"
    )
    say(
        "  max queue lag+pending per step: "
        + " ".join(f"{s}={v:.0f}+{load.max_pending.get(s, 0):.0f}" for s, v in load.max_lag.items())
    )
    with contextlib.suppress(OSError):
        m = scrape(triton_metrics_port)
        for model in ("query-encoder", "ranker"):
            n = metric_sum(m, "nv_inference_count", model=model)
            execs = metric_sum(m, "nv_inference_exec_count", model=model)
            if execs:
                say(f"  triton {model}: {n:.0f} samples in {execs:.0f} batches (avg batch {n / execs:.1f})")
    for p in procs:
        with contextlib.suppress(OSError):
            m = scrape(p.metrics_port)
            dead = metric_sum(m, "agentscale_messages_total", outcome="dead_letter")
            errs = metric_sum(m, "agentscale_errors_total")
            if dead or errs:
                say(f"  {p.name}: {errs:.0f} errors, {dead:.0f} dead letters (see {RUN}/{p.name}.log)")
    if load.error_samples:
        say("  first errors: " + "; ".join(load.error_samples))
    say(f"  workflow {WORKFLOW} Ready={load.ready} in the cluster")


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
        say("_GRPC_PORT/_HTTP_PORT (loopback), AGENTSCALE_METRICS_PORT (one port per local process)")
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
