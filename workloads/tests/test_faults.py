"""Faults and bad input: a killed worker, a restarted Redis, poison messages, malformed payloads."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import replace
from typing import Any

import pytest
from agentscale_harness.local import RedisServer, TritonServer, free_port, wait_until
from agentscale_worker import metrics, streams
from agentscale_worker.config import Graph
from agentscale_worker.examples import (
    VALIDATORS,
    WORKFLOWS,
    LocalContext,
    graph,
    recommendation,
    run_local,
    sample_input,
)
from agentscale_worker.handler import load_handler
from agentscale_worker.runtime import StepWorker
from agentscale_worker.streams import redis_client

from .conftest import assert_close, base_settings, example_flow, start_flow, worker_env

H = "tests.handlers"


async def _all_done(flow: Any, run_ids: list[str]) -> bool:
    for rid in run_ids:
        code, state = await flow.get(f"/v1/runs/{rid}")
        if code != 200 or state["status"] == "queued":
            return False
    return True


@pytest.mark.triton
async def test_sigkill_worker_mid_batch_every_run_completes_once(
    redis_server: RedisServer, triton: TritonServer
) -> None:
    wf = "shop-recs"
    g = graph(wf)
    hs = {s: h for s, (_, _, h) in WORKFLOWS[wf].items()}
    hs["encode"] = f"{H}:gated_encode"
    r = redis_client(redis_server.url)
    async with start_flow(redis_server, wf, hs, g, triton, skip_steps=("encode",), batch_max_size=4) as flow:
        s = base_settings(redis_server, wf, g, concurrency=8, batch_max_size=4, batch_max_wait_ms=5)
        env = worker_env(s, "encode", "query-encoder", triton.grpc_url)
        cmd = [sys.executable, "-m", "agentscale_worker", "step", "--handler", f"{H}:gated_encode"]
        victim = await asyncio.create_subprocess_exec(*cmd, env=env)
        try:
            inputs = [sample_input(wf, i) for i in range(30)]
            replies = await asyncio.gather(*(flow.post("/v1/runs", {"input": x}) for x in inputs))
            run_ids = [b["run_id"] for code, _, b in replies if code == 202]
            assert len(run_ids) == 30
            stream = streams.step_stream(flow.gateway.prefix, "encode")

            async def victim_holds_a_full_window() -> bool:
                return int((await r.xpending(stream, streams.GROUP))["pending"]) == 8

            await wait_until(victim_holds_a_full_window, 30, what="victim took 8 messages")
            victim.send_signal(signal.SIGKILL)
            await asyncio.wait_for(victim.wait(), 10)
        finally:
            if victim.returncode is None:
                victim.kill()
                await victim.wait()
        # a replacement worker takes over the dead consumer's messages (XAUTOCLAIM) and the rest
        async with start_flow(
            redis_server, wf, {"encode": hs["encode"]}, g, triton, batch_max_size=4, batch_max_wait_ms=5
        ) as rescue:
            await r.set("gate", "1")
            await wait_until(lambda: _all_done(flow, run_ids), 60, 0.05, "all runs finished")
            reclaimed = sum(w.processed for w in rescue.workers)
            assert reclaimed == 30  # 8 reclaimed from the dead consumer + 22 never delivered
        results = await r.xrange(streams.results(flow.gateway.prefix))
        per_run: dict[str, int] = {}
        for _, f in results:
            per_run[f["run"]] = per_run.get(f["run"], 0) + 1
        assert per_run == dict.fromkeys(run_ids, 1)
        for rid, x in zip(run_ids, inputs, strict=True):
            _, state = await flow.get(f"/v1/runs/{rid}")
            assert state["status"] == "done"
            assert_close(state["output"], await run_local(wf, x))
        assert await r.xlen(streams.dead_letter(flow.gateway.prefix, "encode")) == 0
    await r.aclose()


@pytest.mark.triton
async def test_redis_restart_loses_nothing_accepted(redis_server: RedisServer, triton: TritonServer) -> None:
    wf = "shop-recs"
    async with example_flow(redis_server, triton, wf, validator=VALIDATORS[wf]) as flow:
        accepted: dict[str, dict[str, Any]] = {}
        refused = 0

        async def client(i: int) -> int:
            nonlocal refused
            x = sample_input(wf, i)
            try:
                code, _, body = await flow.post("/v1/runs", {"input": x})
            except Exception:
                refused += 1
                return 0
            if code == 202:
                accepted[body["run_id"]] = x
            else:  # 503: Redis is down; 429: admission sheds while the backlog's completion rate is unknown
                assert code in (503, 429), body
                refused += 1
            return code

        first = [asyncio.create_task(client(i)) for i in range(40)]
        await wait_until(lambda: len(accepted) >= 10, 30, what="some runs accepted")
        await asyncio.to_thread(redis_server.stop, signal.SIGKILL)  # AOF with appendfsync always
        await asyncio.gather(*first)
        await asyncio.to_thread(redis_server.start)
        await wait_until(lambda: _all_done(flow, list(accepted)), 90, 0.1, "runs accepted before finished")
        # and the gateway takes work again at once: no pooled connection to the old Redis fails a request
        # (it used to: every stale connection gave one 503), and at least the 8 runs of backlog that are
        # always admitted get in
        before = len(accepted)
        codes = await asyncio.gather(*(client(i) for i in range(40, 60)))
        assert 503 not in codes and 0 not in codes, codes
        assert len(accepted) - before >= 8
        await wait_until(lambda: _all_done(flow, list(accepted)), 90, 0.1, "accepted runs finished")
        for rid, x in accepted.items():
            _, state = await flow.get(f"/v1/runs/{rid}")
            assert state["status"] == "done", state
            assert_close(state["output"], await run_local(wf, x))


POISON_GRAPH = Graph.from_dict(
    {"steps": {"a": {"next": ["b"]}, "b": {"next": []}}, "slo": {"p95LatencyMs": 5000}}
)


async def test_poison_message_dead_lettered_after_n_tries_without_blocking(redis_server: RedisServer) -> None:
    hs = {"a": f"{H}:poison", "b": f"{H}:poison"}
    async with start_flow(redis_server, "poison", hs, POISON_GRAPH, max_deliveries=3, concurrency=4) as flow:
        bad = asyncio.create_task(flow.post("/v1/runs/sync", {"input": {"fail": True, "n": -1}}))
        good = await asyncio.gather(*(flow.post("/v1/runs/sync", {"input": {"n": i}}) for i in range(20)))
        for i, (code, _, body) in enumerate(good):
            assert code == 200, body
            assert body["output"] == {"b": {"n": i, "attempt": 1}}
        code, _, body = await bad
        assert code == 500 and body["status"] == "failed"
        assert "poison message -1" in body["error"]
        r = redis_client(redis_server.url)
        dlq = await r.xrange(streams.dead_letter(flow.gateway.prefix, "a"))
        assert len(dlq) == 1
        entry = dlq[0][1]
        assert entry["attempts"] == "3" and "ValueError: poison message -1" in entry["error"]
        assert entry["run"] == body["run_id"]
        # a PermanentError skips the retries
        code, _, body = await flow.post("/v1/runs/sync", {"input": {"permanent": True}})
        assert code == 500
        dlq = await r.xrange(streams.dead_letter(flow.gateway.prefix, "a"))
        assert dlq[-1][1]["attempts"] == "1"
        pending = await r.xpending(streams.step_stream(flow.gateway.prefix, "a"), streams.GROUP)
        assert pending["pending"] == 0
        await r.aclose()


async def test_malformed_payloads_get_4xx_naming_the_problem(redis_server: RedisServer) -> None:
    g = graph("driving-perception")
    async with start_flow(
        redis_server, "driving-perception", {}, g, validator=VALIDATORS["driving-perception"]
    ) as f:
        cases: list[tuple[bytes, int, str]] = [
            (b"{not json", 400, "not valid JSON"),
            (b"[1, 2]", 422, "JSON object"),
            (b'{"image": []}', 422, "unknown fields ['image']"),
            (b'{"priority": 1}', 422, "'input' is required"),
            (b'{"input": {"image": [[1, 2]]}}', 422, "shape [3, 32, 32]"),
            (b'{"input": {"image": "x"}}', 422, "'image'"),
            (b'{"input": {}, "timeout_ms": -5}', 422, "timeout_ms"),
            (b'{"input": {}, "priority": "high"}', 422, "priority"),
        ]
        for raw, status, text in cases:
            for path in ("/v1/runs", "/v1/runs/sync"):
                code, _, body = await f.post(path, None, raw=raw)
                assert code == status, (raw, body)
                assert text in body["error"], (raw, body)
        r = redis_client(redis_server.url)
        assert await r.xlen(streams.step_stream(f.gateway.prefix, "detect")) == 0  # nothing was enqueued
        await r.aclose()


async def test_admission_sheds_with_429_and_retry_after(redis_server: RedisServer) -> None:
    g = Graph.from_dict(
        {"steps": {"a": {"next": []}}, "slo": {"p95LatencyMs": 100, "targetThroughputRps": 10}}
    )
    async with start_flow(redis_server, "shed", {"a": f"{H}:gated_echo"}, g, concurrency=2) as flow:
        flow.gateway.min_backlog = 4
        for i in range(4):
            code, _, _ = await flow.post("/v1/runs", {"input": {"i": i}})
            assert code == 202
        await wait_until(lambda: flow.gateway._backlog >= 4, 5, what="backlog seen")
        code, headers, body = await flow.post("/v1/runs", {"input": {"i": 99}})
        assert code == 429, body
        assert int(headers["Retry-After"]) >= 1 and "overloaded" in body["error"]
        r = redis_client(redis_server.url)
        await r.set("gate", "1")
        await wait_until(lambda: flow.gateway._backlog == 0, 10, what="backlog drained")
        code, _, _ = await flow.post("/v1/runs", {"input": {"i": 100}})
        assert code == 202
        await r.aclose()


async def test_sigterm_drains_in_flight_messages(redis_server: RedisServer) -> None:
    g = Graph.from_dict({"steps": {"a": {"next": []}}})
    r = redis_client(redis_server.url)
    async with start_flow(redis_server, "drain", {}, g) as flow:
        s = base_settings(redis_server, "drain", g, concurrency=4)
        cmd = [sys.executable, "-m", "agentscale_worker", "step", "--handler", f"{H}:gated_echo"]
        proc = await asyncio.create_subprocess_exec(*cmd, env=worker_env(s, "a"))
        try:
            ids = [(await flow.post("/v1/runs", {"input": {"i": i}}))[2]["run_id"] for i in range(6)]
            stream = streams.step_stream(flow.gateway.prefix, "a")

            async def holding() -> bool:
                return int((await r.xpending(stream, streams.GROUP))["pending"]) == 4

            await wait_until(holding, 20, what="worker holds 4")
            proc.send_signal(signal.SIGTERM)
            await r.set("gate", "1")
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert int((await r.xpending(stream, streams.GROUP))["pending"]) == 0
        done = [(await flow.get(f"/v1/runs/{i}"))[1]["status"] for i in ids]
        assert done.count("done") == 4 and done.count("queued") == 2  # drained 4, took no new ones
    await r.aclose()


ONE_STEP = Graph.from_dict({"steps": {"a": {"next": []}}, "slo": {"p95LatencyMs": 5000}})


async def test_slow_messages_are_not_stolen_by_a_healthy_peer(redis_server: RedisServer) -> None:
    """A handler busy for many claim_idle_ms keeps its messages: its heartbeat resets their idle time."""
    fast = dict(claim_idle_ms=1000, claim_interval_s=0.05, concurrency=8)  # heartbeat every 333 ms
    async with start_flow(redis_server, "slow", {"a": f"{H}:gated_echo"}, ONE_STEP, **fast) as flow:
        r = redis_client(redis_server.url)
        stream = streams.step_stream(flow.gateway.prefix, "a")
        replies = await asyncio.gather(*(flow.post("/v1/runs", {"input": {"n": i}}) for i in range(5)))
        run_ids = [b["run_id"] for code, _, b in replies if code == 202]
        assert len(run_ids) == 5

        async def first_holds_all() -> bool:
            return int((await r.xpending(stream, streams.GROUP))["pending"]) == 5

        await wait_until(first_holds_all, 10, what="the first worker took all 5")
        s = replace(base_settings(redis_server, "slow", ONE_STEP, **fast), step="a", consumer="peer")
        peer = StepWorker(s, load_handler(f"{H}:gated_echo"))
        await peer.start()
        try:
            await asyncio.sleep(3.5)  # 3.5 claim_idle_ms windows while the first worker is still busy
            await r.set("gate", "1")
            await wait_until(lambda: _all_done(flow, run_ids), 30, 0.05, "all runs finished")
        finally:
            await peer.drain()
        assert peer.processed == 0
        assert flow.workers[0].processed == 5
        for entry in await r.xpending_range(stream, streams.GROUP, "-", "+", 10):
            raise AssertionError(f"still pending: {entry}")
        results = await r.xrange(streams.results(flow.gateway.prefix))
        assert sorted(f["run"] for _, f in results) == sorted(run_ids)
        await r.aclose()


class _Outage:
    """A TCP port in front of Triton that refuses connections until ``restore()``: a model server outage."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.server: asyncio.AbstractServer | None = None

    async def restore(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))

        self.server = await asyncio.start_server(forward, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server:
            self.server.close()


ENCODE_ONLY = Graph.from_dict({"steps": {"encode": {"model": "query-encoder", "next": []}}})
ENCODE = "agentscale_worker.examples.recommendation:encode"


async def _encode_worker(redis: RedisServer, workflow: str, port: int, **kw: Any) -> StepWorker:
    s = replace(
        base_settings(redis, workflow, ENCODE_ONLY, **kw),
        step="encode",
        model="query-encoder",
        triton_host=f"127.0.0.1:{port}",
        consumer="encode-0",
    )
    w = StepWorker(s, load_handler(ENCODE))
    await w.start()
    return w


@pytest.mark.triton
async def test_model_outage_does_not_spend_deliveries(
    redis_server: RedisServer, triton: TritonServer
) -> None:
    """Triton unreachable for a while: messages wait for it (maxDeliveries=1 would otherwise dead-letter them
    on the first refusal) and all complete once it is back; past the budget, they are dead-lettered."""
    outage = _Outage(int(triton.grpc_url.rsplit(":", 1)[1]))
    r = redis_client(redis_server.url)
    try:
        async with start_flow(redis_server, "outage", {}, ENCODE_ONLY, max_deliveries=1) as flow:
            flow.workers.append(await _encode_worker(redis_server, "outage", outage.port, max_deliveries=1))
            inputs = [{"query": f"red running shoes {i}"} for i in range(4)]
            replies = await asyncio.gather(*(flow.post("/v1/runs", {"input": x}) for x in inputs))
            run_ids = [b["run_id"] for code, _, b in replies if code == 202]
            assert len(run_ids) == 4

            def refused() -> float:
                return float(
                    metrics.ERRORS.labels("test", "outage", "encode", "model_unavailable")._value.get()
                )

            await wait_until(lambda: refused() >= 8, 20, what="the step saw the outage")
            await outage.restore()
            await wait_until(lambda: _all_done(flow, run_ids), 60, 0.05, "all runs finished")
            for rid, x in zip(run_ids, inputs, strict=True):
                _, state = await flow.get(f"/v1/runs/{rid}")
                assert state["status"] == "done", state
                want = await recommendation.encode(LocalContext("query-encoder"), x)
                assert_close(state["output"], {"encode": want})
            assert await r.xlen(streams.dead_letter(flow.gateway.prefix, "encode")) == 0
        # the budget bounds the wait: a model that never comes back dead-letters the message, saying why
        kw: dict[str, Any] = dict(max_deliveries=1, model_unavailable_budget_s=1.0)
        async with start_flow(redis_server, "gone", {}, ENCODE_ONLY, **kw) as flow:
            flow.workers.append(await _encode_worker(redis_server, "gone", free_port(), **kw))
            code, _, body = await flow.post("/v1/runs/sync", {"input": inputs[0], "timeout_ms": 20_000})
            assert code == 500 and body["status"] == "failed", body
            assert "model unavailable" in body["error"] and "past the budget" in body["error"], body
            assert await r.xlen(streams.dead_letter(flow.gateway.prefix, "encode")) == 1
    finally:
        await outage.close()
        await r.aclose()
