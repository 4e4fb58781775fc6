"""The load half of ``make demo`` (scripts/demo.py sets up the cluster side and the local data plane).

An open-loop load on the gateway's sync-run endpoint (RPS for SECONDS), counted in windows; every
REPORT_EVERY_S a line with the window's rates and latencies, the steps' queue lag (scraped from the workers'
metrics) and the workflow's Ready condition; at the end a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
from demo_common import KUBECTL, NS, RPS, RUN, SECONDS, WORKFLOW, Proc, ready_status, say
from prometheus_client.parser import text_string_to_metric_families

from bench.dataplane.stack import percentile

REPORT_EVERY_S = 5.0
MAX_INFLIGHT = 2000  # the load generator's own bound; beyond it a request counts as "dropped"
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


# --- metrics ----------------------------------------------------------------------------------------


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
