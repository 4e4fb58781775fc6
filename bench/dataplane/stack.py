"""Start a real data-plane stack for benchmarks: redis-server, tritonserver (CPU), gateway and workers as
separate processes (so they use both cores), all on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentscale.render.triton import config_pbtxt
from agentscale_harness.local import RedisServer, TritonServer, free_port
from agentscale_harness.models import bench_model
from agentscale_worker.config import Graph

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    return f"{os.cpu_count()} vCPU ({cpu}), {mem} RAM, {platform.system()} {platform.release()}, no GPU"


def triton_config(name: str, batching: bool, max_batch: int = 64) -> str:
    """config.pbtxt of the benchmarks' model server for ``name`` (Python backend, one CPU instance, max batch
    64, dynamic batching 16/32 within 2 ms or none), rendered by the operator's ``config_pbtxt``."""
    return config_pbtxt(bench_model(name, batching, max_batch))


def wait_http(url: str, timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(url)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    import socket

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before opening port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not open in {timeout_s}s")


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, graph: Graph, redis: RedisServer, workflow: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AGENTSCALE_WORKFLOW=workflow,
            AGENTSCALE_NAMESPACE="bench",
            AGENTSCALE_REDIS_URL=redis.url,
            AGENTSCALE_GRAPH=graph.to_json(),
            AGENTSCALE_METRICS_PORT="0",
            PYTHONPATH=str(ROOT / "workloads"),
        )
        env.update(extra)
        return env

    def spawn(
        self, args: list[str], env: dict[str, str], name: str, module: str = "agentscale_worker"
    ) -> subprocess.Popen[bytes]:
        """``python -m <module> <args>``: the worker CLI, or ``agentscale_harness.sim`` (simulated server)."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=log, stderr=log)
        self.procs.append(p)
        return p

    def gateway(self, env: dict[str, str]) -> str:
        port = free_port()
        self.spawn(["gateway", "--port", str(port)], env, "gateway")
        wait_http(f"http://127.0.0.1:{port}/readyz")
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


@contextlib.contextmanager
def services(
    models: list[str], batching: bool = True, repeat: int = 1
) -> Iterator[tuple[RedisServer, TritonServer, Stack]]:
    work = Path(tempfile.mkdtemp(prefix="agentscale-bench-"))
    redis = RedisServer(work / "redis", appendfsync="everysec").start()
    overrides = {m: triton_config(m, batching) for m in models}
    triton = TritonServer(work / "triton", models=models, config_overrides=overrides, repeat=repeat).start()
    stack = Stack(work)
    try:
        yield redis, triton, stack
    finally:
        stack.stop()
        triton.stop()
        redis.stop()


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]
