"""The hostile-client probe behind docs/reliability.md, "Gateway under hostile input" (not a test: a script).

Starts a real redis-server, two gateway processes (one with the perception validator, one without) and a
step worker process, then, as issue 10 describes:
1. 20 concurrent 3.8 MB perception-style bodies at the validating gateway, while /healthz is polled every
   50 ms;
2. 20 concurrent bodies just under 1 MiB at the other one (accepted, run through a step, acknowledged);
3. 300 submits at once from one client;
and prints the gateway's RSS before and at its peak, the slowest /healthz answer, the status codes, and
Redis' dataset before and after (settled). Run it against another checkout of the worker with
``PYTHONPATH=<checkout>/workloads`` (the issue's figures came from the code before this change).

    .venv/bin/python workloads/tests/hostile_probe.py
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from agentscale_harness.local import RedisServer, free_port

WORKLOADS = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def image_body(target_bytes: int) -> bytes:
    """A perception-style request ({"input": {"image": [...]}}) of about ``target_bytes``."""
    n = target_bytes // 10
    return json.dumps({"input": {"image": [0.123456] * n}}).encode()


async def probe() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        graph = json.dumps({"steps": {"a": {"next": []}}, "slo": {"p95LatencyMs": 60000}})
        env = dict(os.environ)
        env.update(
            AGENTSCALE_REDIS_URL=redis.url,
            AGENTSCALE_GRAPH=graph,
            AGENTSCALE_WORKFLOW="probe",
            AGENTSCALE_METRICS_PORT="0",
            PYTHONPATH=os.pathsep.join([env.get("PYTHONPATH", ""), str(WORKLOADS)]),
        )
        cmd = [sys.executable, "-m", "agentscale_worker"]
        ports = [free_port(), free_port()]
        validating = dict(env, AGENTSCALE_VALIDATOR="agentscale_worker.examples.perception:validate")
        procs = _spawn(cmd, env, validating, ports)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
                for url in urls:
                    await _ready(s, url)
                out["big"] = await _burst(s, urls[0], procs[0].pid, image_body(3_800_000), 20)
                out["under_limit"] = await _burst(s, urls[1], procs[1].pid, image_body(1_000_000), 20)
                small = json.dumps({"input": {"n": 1}}).encode()
                out["burst_300"] = await _burst(s, urls[1], procs[1].pid, small, 300)
            out["redis"] = await _redis_settled(redis)
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
            redis.stop()
    return out


def _spawn(cmd: list[str], env: dict[str, str], validating: dict[str, str], ports: list[int]) -> list[Any]:
    return [
        subprocess.Popen([*cmd, "gateway"], env=dict(validating, AGENTSCALE_GATEWAY_PORT=str(ports[0]))),
        subprocess.Popen([*cmd, "gateway"], env=dict(env, AGENTSCALE_GATEWAY_PORT=str(ports[1]))),
        subprocess.Popen(
            [*cmd, "step", "--handler", "tests.handlers:poison"], env=dict(env, AGENTSCALE_STEP="a")
        ),
    ]


async def _ready(s: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        try:
            async with s.get(url + "/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


async def _burst(s: aiohttp.ClientSession, url: str, pid: int, body: bytes, n: int) -> dict[str, Any]:
    """``n`` concurrent POSTs of ``body`` while /healthz is polled; RSS before and at peak."""
    before = rss_mib(pid)
    peak = before
    slowest = 0.0
    done = asyncio.Event()

    async def health() -> None:
        nonlocal peak, slowest
        while not done.is_set():
            t = time.monotonic()
            async with s.get(url + "/healthz") as r:
                await r.read()
            slowest = max(slowest, time.monotonic() - t)
            await asyncio.sleep(0.05)

    async def memory() -> None:  # sampled apart from /healthz, which a blocked gateway answers late
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.01)

    async def post() -> int:
        headers = {"Content-Type": "application/json"}
        try:
            async with s.post(url + "/v1/runs", data=body, headers=headers) as r:
                await r.read()
                return r.status
        except aiohttp.ClientError as e:
            return -1 if "reset" in str(e).lower() else -2

    pollers = [asyncio.create_task(health()), asyncio.create_task(memory())]
    codes = await asyncio.gather(*(post() for _ in range(n)))
    done.set()
    await asyncio.gather(*pollers)
    return {
        "bytes_each": len(body),
        "codes": dict(Counter(codes)),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak, 1),
        "healthz_slowest_ms": round(slowest * 1000, 1),
    }


async def _redis_settled(redis: RedisServer) -> dict[str, Any]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis.url, decode_responses=True)
    for _ in range(600):  # until the worker has taken and finished everything
        groups = await r.xinfo_groups("as:{default/probe}:step:a")
        if all(not g["pending"] and not g["lag"] for g in groups):
            break
        await asyncio.sleep(0.1)
    lengths = {}
    for key in await r.keys("*step:*"):
        lengths[key] = await r.xlen(key)
    await asyncio.sleep(5)  # Redis frees big client buffers in its cron
    stats = await r.memory_stats()
    await r.aclose()
    return {"step_stream_lengths": lengths, "dataset_bytes": stats["dataset.bytes"]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe()), indent=1))
