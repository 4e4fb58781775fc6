"""The load client of the data-plane-as-pods e2e test; runs in a pod (the worker image) next to the workflow.

It submits RUNS runs of the recommendation example to the gateway Service (POST /v1/runs with its own run ids,
open loop at RATE per second), waits for every result (GET /v1/runs/{id}), reports each run's ranked item ids
(the test checks them against the example's own computation, done on the host: the worker image has no torch),
and counts how many times each run was answered in the workflow's results stream in Redis (the step scripts
publish a run's result once, whatever the redeliveries). It prints progress lines (``PROGRESS submitted=N``)
and one final line ``RESULT {json}`` for the test to read from its logs.

Env: GATEWAY (http://host:port), GATEWAY_TOKEN (sent as ``Authorization: Bearer``), REDIS_URL, NAMESPACE,
WORKFLOW, RUNS, RATE, DEADLINE_S.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from agentscale_worker import streams

QUERIES = ["red running shoes", "wireless noise cancelling headphones", "espresso machine", "yoga mat"]


def query(i: int) -> str:
    return f"{QUERIES[i % len(QUERIES)]} size {i % 13} variant {i}"


async def expected(q: str) -> list[int]:
    """The ranked ids the example computes for ``q`` directly (torch: on the host, in the test)."""
    from agentscale_worker.examples import recommendation as rec
    from agentscale_worker.examples.common import LocalContext

    out = await rec.rank(
        LocalContext("ranker"),
        await rec.retrieve(LocalContext(None), await rec.encode(LocalContext("query-encoder"), {"query": q})),
    )
    return [item["id"] for item in out["items"]]


async def submit(session: aiohttp.ClientSession, gateway: str, i: int) -> int:
    body = {"input": {"query": query(i)}, "run_id": f"e2e-{i:05d}"}
    for _ in range(60):  # a 429/503 is retried (shedding is not what this test measures)
        try:
            async with session.post(f"{gateway}/v1/runs", json=body) as r:
                if r.status in (429, 503):
                    await asyncio.sleep(0.5)
                    continue
                return r.status
        except aiohttp.ClientError:
            await asyncio.sleep(0.5)
    return -1


async def poll(session: aiohttp.ClientSession, gateway: str, i: int, deadline: float) -> dict[str, Any]:
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{gateway}/v1/runs/e2e-{i:05d}") as r:
                if r.status == 200:
                    doc = await r.json()
                    if doc.get("status") in ("done", "failed"):
                        return dict(doc)
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    return {"status": "timeout"}


async def main() -> None:
    gateway, runs, rate = os.environ["GATEWAY"], int(os.environ["RUNS"]), float(os.environ["RATE"])
    deadline = time.monotonic() + float(os.environ.get("DEADLINE_S", "300"))
    auth = {"Authorization": f"Bearer {os.environ['GATEWAY_TOKEN']}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=auth) as session:
        attempt = 0
        while time.monotonic() < deadline:  # the first answer: the workflow is up end to end
            attempt += 1
            body = {"input": {"query": "first"}, "run_id": f"e2e-first-{attempt}"}
            try:
                async with session.post(f"{gateway}/v1/runs/sync", json=body) as r:
                    if r.status == 200:
                        print(f"FIRST_ANSWER {time.time():.3f} after {attempt} attempts", flush=True)
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        t0 = time.monotonic()
        tasks = []
        for i in range(runs):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(submit(session, gateway, i)))
            if i % 10 == 9:
                print(f"PROGRESS submitted={i + 1}", flush=True)
        codes = Counter(await asyncio.gather(*tasks))
        print(f"PROGRESS all submitted codes={dict(codes)}", flush=True)
        results = await asyncio.gather(*(poll(session, gateway, i, deadline) for i in range(runs)))
    statuses = Counter(r.get("status") for r in results)
    ranked = {  # {sink step: its output}
        str(i): [item["id"] for item in r["output"]["rank"]["items"]]
        for i, r in enumerate(results)
        if r.get("status") == "done"
    }
    # How many times each run was answered: entries of the results stream (trimmed only by age).
    r = aioredis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    answered: Counter[str] = Counter()
    key = streams.results(streams.prefix(os.environ["NAMESPACE"], os.environ["WORKFLOW"]))
    for _, fields in await r.xrange(key):
        answered[fields.get("run", fields.get("run_id", ""))] += 1
    await r.aclose()
    ours = {f"e2e-{i:05d}" for i in range(runs)}
    summary = {
        "runs": runs,
        "submit_codes": {str(k): v for k, v in codes.items()},
        "statuses": dict(statuses),
        "ranked": ranked,
        "answered_twice": sorted(k for k, v in answered.items() if k in ours and v > 1)[:10],
        "answered": sum(1 for k in answered if k in ours),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print("RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
