"""What the case studies send and how they measure it: request bodies, open-loop runs against the gateway,
the capacity ramp.

Traffic per case: the recommender gets shoppers' queries in a Zipf mix (``s`` = 1.1 over 10,000 distinct
queries: a few queries are very frequent, as in e-commerce search); the voice assistant and the perception
pipeline get a new utterance or camera frame with every request (the example's sample input with its first
value made unique per request), so nothing they send repeats."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from agentscale_worker.examples import sample_input

from bench.dataplane.openloop import open_loop

MODIFIERS = [
    "red",
    "black",
    "white",
    "blue",
    "cheap",
    "wireless",
    "organic",
    "kids",
    "mens",
    "womens",
    "large",
    "small",
    "vintage",
    "leather",
]
MODIFIERS += [
    "waterproof",
    "portable",
    "gaming",
    "smart",
    "outdoor",
    "running",
    "summer",
    "winter",
    "steel",
    "wooden",
    "bamboo",
]
NOUNS = [
    "shoes",
    "headphones",
    "laptop",
    "bag",
    "jacket",
    "watch",
    "chair",
    "lamp",
    "mug",
    "bottle",
    "tent",
    "camera",
]
NOUNS += ["phone case", "backpack", "desk", "speaker", "blender", "kettle", "sofa", "rug"]
SUFFIXES = ["", "sale", "deal", "gift", "set", "pro", "mini", "2026", "for travel", "under 50", "best rated"]
SUFFIXES += ["on sale", "bundle", "refurbished", "new", "xl", "pack", "kit", "plus", "lite"]


def queries(n: int = 10_000) -> list[str]:
    """``n`` distinct shopper queries (at most 25 x 20 x 20 = 10,000), in a fixed order: rank 1 first."""
    out = [" ".join(filter(None, (m, w, s))) for s, m, w in itertools.product(SUFFIXES, MODIFIERS, NOUNS)]
    if n > len(out):
        raise ValueError(f"at most {len(out)} distinct queries")
    return out[:n]


def zipf_ranks(count: int, n: int, s: float, seed: int) -> Any:
    """``count`` draws of a rank in [0, n) with P(rank r) proportional to 1 / (r + 1) ** s."""
    w = 1.0 / np.arange(1, n + 1) ** s
    return np.random.default_rng(seed).choice(n, size=count, p=w / w.sum())


@dataclass(frozen=True)
class Traffic:
    """Request bodies by arrival index: ``body(i)`` is the JSON of the i-th request."""

    kind: str
    body: Callable[[int], bytes]
    describe: str


BLOCK = 50_000  # request indices per measurement: more than any point sends (400 runs/s x 6 s x 2)
UNIQUE_SPAN = 850_000  # distinct values of the unique traffic (0.1 + i x 1e-6 stays below 0.95)


def block(what: str, k: int = 0) -> int:
    """First request index of a measurement, so that no two measurements of one plane send the same
    requests (only the comparison point repeats, by design, across variants): the comparison 0, the
    warm-up 1, ramp point k 2 + k."""
    first = {"compare": 0, "warm-up": 1, "ramp": 2}[what] + k
    if (first + 1) * BLOCK > UNIQUE_SPAN:
        raise ValueError(f"ramp point {k}: at most {UNIQUE_SPAN // BLOCK - 2} points")
    return first * BLOCK


def zipf_traffic(n: int = 10_000, s: float = 1.1, seed: int = 0, count: int = UNIQUE_SPAN) -> Traffic:
    qs = [json.dumps({"input": {"query": q}, "timeout_ms": 30_000}).encode() for q in queries(n)]
    ranks = zipf_ranks(count, n, s, seed)
    return Traffic(
        "zipf", lambda i: qs[ranks[i % count]], f"Zipf s={s} over {n} distinct queries, seed {seed}"
    )


SENTINEL = 0.123456789


def unique_traffic(
    workflow: str, path: tuple[Any, ...], base: float = 0.1, step: float = 1e-6, variants: int = 16
) -> Traffic:
    """The example's sample inputs (``variants`` of them), the value at ``path`` set per request to a value
    no other request has (``base + i x step``, within the example's bounds), so no request repeats."""
    parts: list[tuple[bytes, bytes]] = []
    for seed in range(variants):
        x = sample_input(workflow, seed)
        node = x
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = SENTINEL
        text = json.dumps({"input": x, "timeout_ms": 30_000})
        head, sep, tail = text.partition(repr(SENTINEL))
        if not sep:
            raise ValueError(f"{workflow}: the value at {path} did not serialise as expected")
        parts.append((head.encode(), tail.encode()))
    return Traffic(
        "unique",
        lambda i: (
            parts[i % variants][0]
            + f"{base + (i % UNIQUE_SPAN) * step:.9f}".encode()
            + parts[i % variants][1]
        ),
        f"a new input every request (the example's sample inputs, `{'/'.join(map(str, path))}` unique)",
    )


class GatewayClient:
    """POST /v1/runs/sync; anything but 200 raises (429 shed, 5xx, timeouts count as errors)."""

    def __init__(self, url: str) -> None:
        self.url = url + "/v1/runs/sync"
        self.session: aiohttp.ClientSession | None = None
        self.statuses: dict[int, int] = {}

    async def __aenter__(self) -> GatewayClient:
        conn = aiohttp.TCPConnector(limit=0)
        self.session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session
        await self.session.close()

    async def post(self, body: bytes) -> None:
        assert self.session
        async with self.session.post(self.url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")


async def measure(
    url: str, traffic: Traffic, rate: float, seconds: float, seed: int, offset: int = 0
) -> dict[str, Any]:
    """One open-loop point: Poisson arrivals at ``rate`` for ``seconds`` (arrival times from ``seed``; the
    i-th arrival sends ``traffic.body(offset + i)``)."""
    async with GatewayClient(url) as client:
        out: dict[str, Any] = dict(
            await open_loop(
                lambda i: client.post(traffic.body(offset + i)), rate, seconds, seed=seed, drain_s=30
            )
        )
        out["statuses"] = {str(k): v for k, v in sorted(client.statuses.items())}
    return out


def meets(point: dict[str, Any], bound_ms: float, quantile: str = "p95_ms") -> bool:
    """A point is within a latency bound: the quantile (p95) of the answered runs at most the bound, at most
    5% of the runs not answered (shed with 429 by the gateway's admission control, or failed: as if they
    took longer than the p95), and it kept up (completions at least 90% of the offered rate)."""
    ok = point["sent"] - point["errors"]
    return (
        math.isfinite(point[quantile])
        and point[quantile] <= bound_ms
        and point["errors"] <= 0.05 * max(1, point["sent"])
        and ok > 0
        and point["achieved_rps"] >= 0.9 * point["offered_rps"]
    )


def duration(rate: float, seconds: float, min_runs: int, max_seconds: float) -> float:
    """How long a point runs: ``seconds``, or longer at low rates so that about ``min_runs`` runs arrive
    (a p95 needs samples), but never past ``max_seconds``."""
    return max(seconds, min(max_seconds, min_runs / max(rate, 1e-9)))


async def ramp(
    plane: Any,
    traffic: Traffic,
    slo_p95_ms: float,
    seconds: float,
    start_rps: float,
    max_points: int,
    seed: int = 1,
    observe: Callable[[], dict[str, Any]] | None = None,
    min_runs: int = 20,
    max_seconds: float = 30.0,
) -> dict[str, Any]:
    """The capacity: the highest Poisson rate the system sustains, i.e. its median stays within the SLO with
    at most 5% shed and completions keeping up (``meets`` on p50: past saturation the queue grows and the
    median runs away; a p95 of 20 runs would be the second slowest, and one hiccup of a shared machine would
    stop the ramp), and the highest rate that also meets the SLO itself, p95 (``at_slo_rps``, 0 if none).
    Halves from ``start_rps`` until a rate is sustained, doubles until one is not, then steps by 1.2x below
    that. Every point gets the same arrival seed; the system drains (no run in flight) before each;
    ``observe()`` (metrics) is read around each. A point lasts ``duration(rate, seconds, min_runs,
    max_seconds)``: long enough for about ``min_runs`` runs."""
    points: list[dict[str, Any]] = []
    best, upper = 0.0, math.inf

    async def point(rate: float) -> bool:
        nonlocal best, upper
        await plane.drain()
        before = observe() if observe else {}
        span = duration(rate, seconds, min_runs, max_seconds)
        p = await measure(plane.gateway_url, traffic, rate, span, seed, offset=block("ramp", len(points)))
        if observe:
            p["metrics"] = delta(before, observe())
        p["meets_slo"] = meets(p, slo_p95_ms)
        p["sustained"] = meets(p, slo_p95_ms, "p50_ms")
        p["load1"] = os.getloadavg()[0]
        points.append(p)
        if p["sustained"]:
            best = max(best, rate)
        else:
            upper = min(upper, rate)
        return bool(p["sustained"])

    rate = start_rps
    while len(points) < max_points and not await point(rate) and rate > 0.1:
        rate /= 2
    while best and len(points) < max_points and best * 2 < upper and await point(best * 2):
        pass
    rate = best * 1.2
    while best and len(points) < max_points and rate < upper:
        rate = best * 1.2 if await point(rate) else math.inf
    at_slo = max((p["offered_rps"] for p in points if p["meets_slo"]), default=0.0)
    return {"capacity_rps": best, "at_slo_rps": at_slo, "points": points}


KEEP = (
    "nv_inference_request_success",
    "nv_inference_exec_count",
    "nv_inference_count",
    "nv_cache_num_",
    "agentscale_step_cache",
    "agentscale_result_cache",
    "agentscale_messages_total",
)


def delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Counter increases per part between two ``Plane.metrics()`` readings (the counters used here)."""
    out: dict[str, dict[str, float]] = {}
    for part, now in after.items():
        was = before.get(part, {})
        d = {
            k: v - was.get(k, 0.0)
            for k, v in now.items()
            if k.startswith(KEEP) and not k.endswith("_created")
        }
        if d:
            out[part] = d
    return out
