"""The load of ``make demo``, run in a pod beside shop-recs (the worker image; scripts/demo_pods.py starts it
from a ConfigMap and reads its logs: the host cannot reach pod addresses, which live in the real node's
network namespace).

First a smoke run: POST /v1/runs/sync until one answers (up to STARTUP_S), printed as ``SMOKE {json}``. Then
an open loop on the same endpoint: request i is sent at i / RPS s whatever the latency of the others, for
SECONDS. Every REPORT_EVERY_S one ``WINDOW {json}`` line (sent, answered, latency percentiles, 429s, errors);
at the end ``SUMMARY {json}`` with the totals and, when TRITON_METRICS names the model servers' metrics URLs,
each model's samples and batches.

The offered rate follows PROFILE: ``flat`` (RPS throughout) or ``ramp-spike`` (what shows the resource
controller at work: RPS/2 for the first 20% of SECONDS, a linear ramp to RPS until 45%, RPS, a spike of
2 x RPS for SPIKE_S seconds from 55%, RPS again, and RPS/2 for the last 20%: see ``rate_at``).

Env: GATEWAY (http://host:port), GATEWAY_TOKEN (sent as ``Authorization: Bearer``), RPS, SECONDS,
PROFILE (flat), SPIKE_S (10), REPORT_EVERY_S (5), STARTUP_S (180), TRITON_METRICS (comma-separated URLs,
optional).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from typing import Any

import aiohttp

GATEWAY = os.environ["GATEWAY"]
RPS = float(os.environ["RPS"])
SECONDS = float(os.environ["SECONDS"])
REPORT_EVERY_S = float(os.environ.get("REPORT_EVERY_S", "5"))
STARTUP_S = float(os.environ.get("STARTUP_S", "180"))
PROFILE = os.environ.get("PROFILE", "flat")
SPIKE_S = float(os.environ.get("SPIKE_S", "10"))
MAX_INFLIGHT = 2000  # the generator's own bound; beyond it a request counts as "dropped"
QUERIES = [
    "wireless noise cancelling headphones",
    "running shoes for trail",
    "espresso machine with grinder",
    "4k monitor 27 inch",
    "kids bike with training wheels",
    "waterproof hiking jacket",
    "mechanical keyboard brown switches",
    "cast iron skillet",
]


def rate_at(t: float, profile: str = PROFILE, rps: float = RPS, seconds: float = SECONDS) -> float:
    """The offered rate (requests/s) ``t`` seconds into the load."""
    if profile == "flat":
        return rps
    if profile != "ramp-spike":
        raise SystemExit(f"PROFILE must be flat or ramp-spike (got {profile!r})")
    base, f = rps / 2, t / seconds
    spike_at = 0.55 * seconds
    if spike_at <= t < spike_at + min(SPIKE_S, 0.2 * seconds):
        return 2 * rps
    if f < 0.2 or f >= 0.8:
        return base
    if f < 0.45:
        return base + (rps - base) * (f - 0.2) / 0.25
    return rps


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def emit(kind: str, doc: dict[str, Any]) -> None:
    print(f"{kind} {json.dumps(doc)}", flush=True)


class Counts:
    def __init__(self) -> None:
        self.sent = 0
        self.ok: list[float] = []
        self.shed = 0
        self.errors = 0
        self.dropped = 0

    def add(self, other: Counts) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.shed += other.shed
        self.errors += other.errors
        self.dropped += other.dropped

    def doc(self, seconds: float) -> dict[str, Any]:
        return {
            "seconds": round(seconds, 2),
            "sent": self.sent,
            "ok": len(self.ok),
            "shed": self.shed,
            "errors": self.errors + self.dropped,
            "p50_ms": round(percentile(self.ok, 50), 1),
            "p95_ms": round(percentile(self.ok, 95), 1),
            "p99_ms": round(percentile(self.ok, 99), 1),
            "max_ms": round(max(self.ok, default=float("nan")), 1),
        }


window, total = Counts(), Counts()
inflight = 0
error_samples: list[str] = []


async def smoke(session: aiohttp.ClientSession) -> None:
    deadline, attempts = time.monotonic() + STARTUP_S, 0
    last = ""
    while time.monotonic() < deadline:
        attempts += 1
        t = time.perf_counter()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            body = {"input": {"query": QUERIES[0]}}
            async with session.post(GATEWAY + "/v1/runs/sync", json=body) as r:
                last = f"HTTP {r.status}"
                if r.status == 200:
                    res = await r.json()
                    items = res["output"]["rank"]["items"][:3]
                    ms = (time.perf_counter() - t) * 1000
                    emit(
                        "SMOKE",
                        {"run_id": res["run_id"], "ms": round(ms), "attempts": attempts, "items": items},
                    )
                    return
        await asyncio.sleep(1)
    raise SystemExit(f"no answer from {GATEWAY} within {STARTUP_S:.0f}s (last: {last or 'no response'})")


async def one(session: aiohttp.ClientSession, i: int) -> None:
    global inflight
    body = {"input": {"query": f"{QUERIES[i % len(QUERIES)]} #{i}"}, "timeout_ms": 10_000}
    t = time.perf_counter()
    inflight += 1
    try:
        async with session.post(GATEWAY + "/v1/runs/sync", json=body) as r:
            await r.read()
            status = r.status
    except Exception as e:  # every failure is counted, the first few are shown
        status = -1
        if len(error_samples) < 5:
            error_samples.append(f"{type(e).__name__}: {e}")
    finally:
        inflight -= 1
    if status == 200:
        window.ok.append((time.perf_counter() - t) * 1000)
    elif status == 429:
        window.shed += 1
    else:
        window.errors += 1
        if status > 0 and len(error_samples) < 5:
            error_samples.append(f"HTTP {status}")


async def generate(session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    start, i = loop.time(), 0
    due = start
    while True:
        if i:
            due += 1 / rate_at(due - start)
        if due >= start + SECONDS:
            break
        await asyncio.sleep(max(0.0, due - loop.time()))
        window.sent += 1
        if inflight >= MAX_INFLIGHT:
            window.dropped += 1
        else:
            task = asyncio.create_task(one(session, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        i += 1
    if tasks:  # requests in flight finish (bounded)
        _, late = await asyncio.wait(tasks, timeout=16)
        for task in late:
            task.cancel()


async def report(done: asyncio.Event) -> None:
    global window
    t0 = last = time.monotonic()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), REPORT_EVERY_S)
        now = time.monotonic()
        w, window = window, Counts()
        total.add(w)
        emit("WINDOW", {"t": round(now - t0, 1), **w.doc(now - last)})
        last = now


async def triton_batches(session: aiohttp.ClientSession) -> dict[str, dict[str, float]]:
    """Per model: samples and batches executed, summed over the model servers' metrics endpoints."""
    out: dict[str, dict[str, float]] = {}
    pattern = re.compile(r'^(nv_inference_count|nv_inference_exec_count)\{[^}]*model="([^"]+)"[^}]*\} (\S+)')
    for url in filter(None, os.environ.get("TRITON_METRICS", "").split(",")):
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
                for line in (await r.text()).splitlines():
                    m = pattern.match(line)
                    if m:
                        per = out.setdefault(m.group(2), {"samples": 0.0, "batches": 0.0})
                        per["samples" if m.group(1) == "nv_inference_count" else "batches"] += float(
                            m.group(3)
                        )
    return out


async def main() -> None:
    headers = {"Authorization": f"Bearer {os.environ['GATEWAY_TOKEN']}"}
    timeout = aiohttp.ClientTimeout(total=15)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        await smoke(session)
        before = await triton_batches(session)
        done = asyncio.Event()
        reporter = asyncio.create_task(report(done))
        t0 = time.monotonic()
        await generate(session)
        wall = time.monotonic() - t0
        done.set()
        await reporter
        after = await triton_batches(session)
    batches = {
        model: {k: v - before.get(model, {}).get(k, 0.0) for k, v in per.items()}
        for model, per in after.items()
    }
    emit("SUMMARY", {**total.doc(wall), "errors_first": error_samples, "triton": batches})


if __name__ == "__main__":
    asyncio.run(main())
