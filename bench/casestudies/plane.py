"""Run one AgentWorkflow's data plane on this machine, configured by the operator's own rendering.

Every process gets what the operator would give its pod: a step worker the environment of
``render.workers.step_env`` (concurrency, micro-batching, balancing, result cache, ...), the gateway that of
``render.workers.gateway_env``, each model server the ``config.pbtxt`` of ``render.triton.config_pbtxt`` (for
a machine without a GPU: ``agentscale_harness.models.on_cpu``) and the server arguments the rendered
Deployment adds to the harness's own (``--cache-config``). Only addresses change: Redis, Triton and the
metrics ports are local. One replica of everything: one gateway, one worker per step, one tritonserver per
model server (each a separate process, as each is a separate pod in a cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentscale.api.models import AgentWorkflow
from agentscale.render import triton as render_triton
from agentscale.render import workers as render_workers
from agentscale.render.triton import config_pbtxt
from agentscale_harness.local import RedisServer, TritonServer, free_port
from agentscale_harness.models import on_cpu
from agentscale_worker import streams

from bench.dataplane.stack import Stack, wait_http

# Flags the harness's TritonServer sets itself (ports, repository, readiness, logging).
HARNESS_FLAGS = {
    "--model-repository",
    "--backend-directory",
    "--http-port",
    "--grpc-port",
    "--metrics-port",
    "--allow-metrics",
    "--allow-gpu-metrics",
    "--strict-readiness",
    "--log-verbose",
    "--cache-directory",
}
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([^\s]+)")


THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def pin_threads() -> dict[str, str]:
    """One compute thread per process (torch's intra-op pool, BLAS), for every process started from here:
    a model instance per server process, several servers, workers and the gateway share 2 cores, and torch's
    default (a thread per core in every process) would oversubscribe them. The same for both variants, as
    in bench/dataplane's batching benchmark. Returns what it set, for the results file."""
    import os

    for k, v in THREADS.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in THREADS}


def server_args(wf: AgentWorkflow, model_name: str) -> list[str]:
    """The rendered Deployment's tritonserver arguments that are not about ports or paths."""
    model = next(m for m in wf.spec.models if m.name == model_name)
    args = render_triton.deployment(wf, model)["spec"]["template"]["spec"]["containers"][0]["args"]
    return [a for a in args if a.split("=", 1)[0] not in HARNESS_FLAGS]


def env_dict(env: list[dict[str, Any]], **override: str) -> dict[str, str]:
    """A rendered container environment as a process environment (the namespace is ``bench``)."""
    out: dict[str, str] = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = str(e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            out[e["name"]] = "bench"
        else:
            raise ValueError(f"{e['name']}: cannot resolve {e.get('valueFrom')} outside a cluster")
    out.update(override)
    return out


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page summed by metric name (labels dropped); {} when it does not answer."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or line.startswith("#"):
            continue
        with contextlib.suppress(ValueError):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


@dataclass
class Plane:
    wf: AgentWorkflow
    redis: RedisServer
    gateway_url: str
    tritons: dict[str, TritonServer]
    worker_metrics: dict[str, int]  # step -> metrics port
    stack: Stack
    work: Path
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Each model server's and worker's metrics, by name: {"triton/<model>": ..., "step/<s>": ...}."""
        out = {
            f"triton/{m}": scrape(f"http://127.0.0.1:{t.metrics_port}/metrics")
            for m, t in self.tritons.items()
        }
        for step, port in self.worker_metrics.items():
            out[f"step/{step}"] = scrape(f"http://127.0.0.1:{port}/metrics")
        return out

    async def drain(self, timeout_s: float = 60) -> bool:
        """Wait until no run is in flight (the gateway's ``inflight`` counter is 0)."""
        import redis.asyncio as aioredis

        key = streams.inflight(streams.prefix("bench", self.wf.name))
        client = aioredis.from_url(self.redis.url)
        try:
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                if int(await client.get(key) or 0) <= 0:
                    return True
                await asyncio.sleep(0.2)
            return False
        finally:
            await client.aclose()


def _start_triton(work: Path, wf: AgentWorkflow, name: str) -> TritonServer:
    model = next(m for m in wf.spec.models if m.name == name)
    server = TritonServer(
        work / f"triton-{name}", models=[name], config_overrides={name: config_pbtxt(on_cpu(model))}
    )
    extra = server_args(wf, name)
    if extra:
        if not hasattr(server, "extra_args"):
            raise RuntimeError(f"model {name} needs server arguments {extra}: TritonServer has no extra_args")
        server.extra_args = extra
    return server.start(ready_timeout_s=300)


@contextlib.contextmanager
def running(wf: AgentWorkflow) -> Iterator[Plane]:
    """Redis, one tritonserver per model server, the gateway and one worker per step, as rendered."""
    work = Path(tempfile.mkdtemp(prefix=f"agentscale-case-{wf.name}-"))
    redis = RedisServer(work / "redis", appendfsync="everysec").start()
    stack = Stack(work)
    tritons: dict[str, TritonServer] = {}
    try:
        for m in wf.spec.models:
            tritons[m.name] = _start_triton(work, wf, m.name)
        ports: dict[str, int] = {}
        for step in wf.spec.steps:
            port = free_port()
            host = tritons[step.model].grpc_url if step.model else ""
            env = env_dict(
                render_workers.step_env(wf, step),
                AGENTSCALE_REDIS_URL=redis.url,
                AGENTSCALE_TRITON_HOST=host,
                AGENTSCALE_METRICS_PORT=str(port),
            )
            container = render_workers.step_deployment(wf, step)["spec"]["template"]["spec"]["containers"][0]
            if container["command"] != ["agentscale-worker", "step"]:
                raise ValueError(f"step {step.name}: only the worker's own command runs here")
            stack.spawn(
                ["step", *container.get("args", [])],
                stack.env(wf_graph(wf), redis, wf.name, **env),
                step.name,
            )
            ports[step.name] = port
        gw_env = env_dict(render_workers.gateway_env(wf), AGENTSCALE_REDIS_URL=redis.url)
        gw_env["AGENTSCALE_METRICS_PORT"] = str(free_port())
        url = stack.gateway(stack.env(wf_graph(wf), redis, wf.name, **gw_env))
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s=60)
        yield Plane(wf, redis, url, tritons, ports, stack, work)
    finally:
        stack.stop()
        for t in tritons.values():
            t.stop()
        redis.stop()


def wf_graph(wf: AgentWorkflow) -> Any:
    from agentscale_worker.config import Graph

    return Graph.from_json(render_workers.graph_json(wf))
