"""Redis memory under big payloads: acknowledged entries are deleted (only what every consumer group acked),
run records expire, the dead-letter stream is bounded, memory is reported per workflow; and a step worker's
readiness follows its Redis connection. Real redis-server."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
from agentscale_harness.local import RedisServer, free_port, wait_until
from agentscale_worker import metrics, queue_stats, streams
from agentscale_worker.config import Graph, Settings
from agentscale_worker.handler import load_handler
from agentscale_worker.runtime import StepWorker
from agentscale_worker.streams import redis_client

from .conftest import base_settings, start_flow

H = "tests.handlers"
TWO = Graph.from_dict({"steps": {"a": {"next": ["b"]}, "b": {"next": []}}, "slo": {"p95LatencyMs": 5000}})
PAYLOAD = {"blob": "p" * 200_000}  # 200 kB per message, twice per run (a, then b)


async def test_acknowledged_payloads_leave_redis(redis_server: RedisServer) -> None:
    hs = {"a": f"{H}:poison", "b": f"{H}:poison"}
    r = redis_client(redis_server.url)
    async with start_flow(redis_server, "mem", hs, TWO, result_ttl_s=120) as f:
        data_before = int((await r.memory_stats())["dataset.bytes"])
        replies = await asyncio.gather(
            *(f.post("/v1/runs/sync", {"input": {**PAYLOAD, "n": i}}) for i in range(20))
        )
        assert [c for c, _, _ in replies] == [200] * 20
        p = f.gateway.prefix
        for step in ("a", "b"):
            stream = streams.step_stream(p, step)
            info = await r.xinfo_stream(stream)
            assert info["entries-added"] == 20 and info["length"] == 0, (step, info)
            assert (await r.xpending(stream, streams.GROUP))["pending"] == 0
        # 4 MB of payloads went through; what stays is the small run records (Redis frees the big
        # command buffers of its clients within a few seconds, in its own cron)

        async def settled() -> bool:
            return int((await r.memory_stats())["dataset.bytes"]) - data_before < 400_000

        await wait_until(settled, 20, 0.2, "the dataset shrank back")
        run_id = replies[0][2]["run_id"]
        assert 0 < await r.ttl(streams.run(p, run_id)) <= 120  # results expire
        total = await queue_stats.workflow_memory_once(r, p, TWO, ("test", "mem"))
        assert total < 100_000
        assert metrics.REDIS_STREAM_LENGTH.labels("test", "mem", "step:a")._value.get() == 0
        assert metrics.REDIS_STREAM_LENGTH.labels("test", "mem", "results")._value.get() == 20
        assert metrics.REDIS_WORKFLOW_BYTES.labels("test", "mem")._value.get() == total
        assert metrics.REDIS_USED_MEMORY.labels("test", "mem")._value.get() > 0
    await r.aclose()


async def test_entries_stay_until_every_group_acked_them(redis_server: RedisServer) -> None:
    """A second consumer group (an audit reader, say) keeps entries alive until it acknowledged them too;
    the lag the autoscaler reads stays right across the deletions."""
    g = Graph.from_dict({"steps": {"a": {"next": []}}, "slo": {"p95LatencyMs": 5000}})
    r = redis_client(redis_server.url)
    async with start_flow(redis_server, "groups", {}, g) as f:
        stream = streams.step_stream(f.gateway.prefix, "a")
        await r.xgroup_create(stream, "audit", id="0", mkstream=True)
        w = StepWorker(replace(base_settings(redis_server, "groups", g), step="a", consumer="w"), _echo)
        await w.start()
        try:
            codes = [(await f.post("/v1/runs/sync", {"input": {"n": i}}))[0] for i in range(6)]
            assert codes == [200] * 6
            assert await r.xlen(stream) == 6  # workers acked all, audit nothing: all stay
            assert await streams.trim_acked(r, stream) == 0
            got = await r.xreadgroup("audit", "x", {stream: ">"}, count=4)
            ids = [i for _, batch in got for i, _ in batch]
            await r.xack(stream, "audit", *ids[:3])  # the 4th stays pending in audit
            assert await streams.trim_acked(r, stream) == 3
            assert await r.xlen(stream) == 3
            await f.post("/v1/runs", {"input": {"n": 99}})  # one more for the audit group to lag on
            await wait_until(lambda: w.processed == 7, 10, what="worker took the 7th")
            lags = {x["name"]: x["lag"] for x in await r.xinfo_groups(stream)}
            assert lags == {"workers": 0, "audit": 3}
        finally:
            await w.drain()
    await r.aclose()


async def _echo(ctx: object, payload: object) -> object:
    return payload


async def test_dead_letters_are_bounded(redis_server: RedisServer) -> None:
    hs = {"a": f"{H}:poison", "b": f"{H}:poison"}
    kw = dict(max_deliveries=1, dlq_maxlen=5)
    async with start_flow(redis_server, "dlq", hs, TWO, **kw) as f:
        for i in range(300):
            await f.post("/v1/runs", {"input": {"permanent": True, "n": i}})
        r = redis_client(redis_server.url)
        dlq = streams.dead_letter(f.gateway.prefix, "a")
        await wait_until(lambda: _added(r, dlq, 300), 30, what="300 dead letters")
        assert await r.xlen(dlq) < 300  # MAXLEN ~ 5: whole macro nodes go, so a bit more than 5 stay
        assert await r.xlen(streams.step_stream(f.gateway.prefix, "a")) == 0
        await r.aclose()


async def _added(r: object, key: str, n: int) -> bool:
    info = await r.xinfo_stream(key)  # type: ignore[attr-defined]
    return int(info["entries-added"]) >= n


def test_settings_read_the_new_limits_from_the_environment() -> None:
    env = {
        "AGENTSCALE_RESULT_TTL_S": "600",
        "AGENTSCALE_DLQ_MAXLEN": "50",
        "AGENTSCALE_REDIS_MAX_CONNECTIONS": "16",
        "AGENTSCALE_REDIS_POOL_TIMEOUT_S": "2.5",
        "AGENTSCALE_GATEWAY_TOKENS_DIR": "/var/run/agentscale/gateway-tokens",
        "AGENTSCALE_GATEWAY_MAX_BODY_BYTES": "2048",
        "AGENTSCALE_GATEWAY_MAX_JSON_DEPTH": "8",
        "AGENTSCALE_GATEWAY_PARSE_CONCURRENCY": "2",
        "AGENTSCALE_GATEWAY_BODY_BUDGET_BYTES": str(8 << 20),
    }
    s = Settings.from_env(env)
    assert (s.result_ttl_s, s.dlq_maxlen, s.redis_max_connections, s.redis_pool_timeout_s) == (
        600,
        50,
        16,
        2.5,
    )
    assert s.gateway_tokens_dir == "/var/run/agentscale/gateway-tokens"
    assert (s.max_body_bytes, s.max_json_depth, s.parse_concurrency, s.body_budget_bytes) == (
        2048,
        8,
        2,
        8 << 20,
    )
    d = Settings.from_env({})
    assert (d.gateway_tokens_dir, d.max_body_bytes, d.result_ttl_s) == ("", 1 << 20, 3600)


async def test_step_readiness_follows_redis(redis_server: RedisServer) -> None:
    port = free_port()
    g = Graph.from_dict({"steps": {"a": {"next": []}}})
    s = replace(base_settings(redis_server, "ready", g), step="a", metrics_port=port)
    w = StepWorker(s, load_handler(f"{H}:poison"))
    await w.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready_is(code: int) -> bool:
                async with session.get(url + "/readyz") as resp:
                    return resp.status == code

            assert await ready_is(200)
            await asyncio.to_thread(redis_server.stop)
            await wait_until(lambda: ready_is(503), 10, what="not ready without Redis")
            async with session.get(url + "/healthz") as resp:
                assert resp.status == 200  # alive all the same: the kubelet must not restart it for this
            await asyncio.to_thread(redis_server.start)
            await wait_until(lambda: ready_is(200), 20, what="ready again")
    finally:
        await w.drain()


async def test_a_pool_wait_that_runs_out_reads_as_busy_not_down(redis_server: RedisServer) -> None:
    r = streams.redis_client(redis_server.url, max_connections=2, pool_timeout_s=0.2)
    blockers = [asyncio.create_task(r.blpop(["never"], timeout=3)) for _ in range(2)]  # hold both connections
    await wait_until(lambda: len(r.connection_pool._in_use_connections) == 2, 5, what="both connections held")
    try:
        await r.ping()
    except streams.REDIS_ERRORS as e:
        assert streams.pool_exhausted(e), repr(e)
    else:
        raise AssertionError("a third command got a connection from a pool of two")
    await asyncio.gather(*blockers)
    assert await r.ping()
    await r.aclose()
    down = streams.redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        await down.ping()
    except streams.REDIS_ERRORS as e:
        assert not streams.pool_exhausted(e), repr(e)
    await down.aclose()
