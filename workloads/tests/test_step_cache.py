"""The step result cache against a real redis-server: no wrong hits (colliding prefixes, long shared
prefixes), TTL expiry, the maxEntries bound with evictions counted, and Redis failures that degrade to
computing the step; then through the runtime, where a repeated input skips the handler and the model."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from agentscale_harness.local import RedisServer, TritonServer, wait_until
from agentscale_worker import metrics, streams
from agentscale_worker.config import Graph, Settings
from agentscale_worker.examples import VALIDATORS, WORKFLOWS, graph, sample_input
from agentscale_worker.step_cache import StepCache, cache_key, canonical_json, entries_prefix, lru_key
from prometheus_client import REGISTRY

from .conftest import assert_close, start_flow

CALLS: Counter[str] = Counter()  # handler calls by workflow (the workers run in this process)


async def counting_echo(ctx: Any, payload: Any) -> dict[str, Any]:
    """Counts its calls and answers with its input, so a wrong hit shows as a wrong answer."""
    CALLS[ctx.workflow] += 1
    return {"echo": payload}


def sample(name: str, workflow: str, step: str = "a", **labels: str) -> float:
    value = REGISTRY.get_sample_value(
        name, {"namespace": "test", "workflow": workflow, "step": step, **labels}
    )
    return value or 0.0


def make_cache(redis: Any, workflow: str, **kw: Any) -> StepCache:
    args: dict[str, Any] = dict(ttl_s=60, max_entries=100, max_entry_bytes=1 << 20, version="v1")
    args.update(kw)
    labels = metrics.StepLabels("test", workflow, "a")
    return StepCache(redis, streams.prefix("test", workflow), "a", "m", labels, **args)


# ----------------------------------------------------------------------------------------- the key


COLLIDING = [
    ({"q": "ab", "x": "c"}, {"q": "a", "x": "bc"}),
    ({"q": "a", "x": "bc"}, {"q": "a", "x": "b", "c": ""}),
    ({"a": [1, 2], "b": 3}, {"a": [1], "b": [2, 3]}),
    ("x" * 100_000 + "a", "x" * 100_000 + "b"),
    ({"q": "x" * 50_000}, {"q": "x" * 50_001}),
    (1, 1.0),
    ("2", 2),
    (None, "null"),
]


@pytest.mark.parametrize(("one", "other"), COLLIDING)
def test_different_inputs_have_different_keys(one: Any, other: Any) -> None:
    assert cache_key("v", "a", "m", "", one) != cache_key("v", "a", "m", "", other)


def test_every_key_field_counts_and_none_runs_into_the_next() -> None:
    base = cache_key("v", "a", "m", "", {"q": 1})
    assert len({base, cache_key("w", "a", "m", "", {"q": 1}), cache_key("v", "b", "m", "", {"q": 1})}) == 3
    assert cache_key("v", "a", "n", "", {"q": 1}) != base
    assert cache_key("v", "a", "m", "*", {"q": 1}) != base  # a join's message vs a source's
    assert cache_key("va", "", "m", "", {}) != cache_key("v", "a", "m", "", {})  # framing, not concatenation


def test_the_same_input_written_differently_has_one_key() -> None:
    assert canonical_json({"b": 1, "a": [1, {"y": 2, "x": "é"}]}) == canonical_json(
        {"a": [1, {"x": "é", "y": 2}], "b": 1}
    )
    assert cache_key("v", "a", "m", "", {"b": 1, "a": 2}) == cache_key("v", "a", "m", "", {"a": 2, "b": 1})


# ----------------------------------------------------------------------------------------- the store


async def test_a_hit_returns_exactly_what_was_stored_and_only_for_its_input(
    redis_server: RedisServer,
) -> None:
    r = streams.redis_client(redis_server.url)
    wf = "sc-hit"
    cache = make_cache(r, wf)
    stored = {}
    for i, (one, other) in enumerate(COLLIDING):
        k1, k2 = cache.key(one), cache.key(other)
        assert await cache.get(k1) is None
        out = f'{{"answer":{i}}}'
        await cache.put(k1, out)
        stored[k1] = out
        assert await cache.get(k1) == out
        assert await cache.get(k2) is None  # the colliding-prefix twin is a miss
    for k, out in stored.items():  # nothing overwrote anything
        assert await cache.get(k) == out
    n = len(COLLIDING)
    assert sample("agentscale_step_cache_hits_total", wf) == 2 * n
    assert sample("agentscale_step_cache_misses_total", wf) == 2 * n
    assert sample("agentscale_step_cache_errors_total", wf, op="get") == 0
    await r.aclose()


async def test_entries_expire_after_the_ttl_and_hits_do_not_extend_it(redis_server: RedisServer) -> None:
    r = streams.redis_client(redis_server.url)
    cache = make_cache(r, "sc-ttl", ttl_s=1)
    k = cache.key({"q": "hello"})
    await cache.put(k, '"world"')
    entry = entries_prefix(streams.prefix("test", "sc-ttl"), "a") + k
    assert 0 < await r.pttl(entry) <= 1000
    assert await cache.get(k) == '"world"'
    assert 0 < await r.pttl(entry) <= 1000  # the hit did not reset the clock

    async def gone() -> bool:
        return await r.exists(entry) == 0

    await wait_until(gone, 10, 0.05, "the entry expired")
    assert await cache.get(k) is None
    assert await r.zscore(lru_key(streams.prefix("test", "sc-ttl"), "a"), k) is None  # the miss cleaned up
    await r.aclose()


async def test_the_bound_evicts_the_least_recently_used_and_counts_it(redis_server: RedisServer) -> None:
    r = streams.redis_client(redis_server.url)
    wf = "sc-bound"
    cache = make_cache(r, wf, max_entries=3)
    keys = [cache.key({"n": i}) for i in range(6)]
    for i in range(3):
        await cache.put(keys[i], str(i))
    assert await cache.get(keys[0]) == "0"  # 0 is now more recent than 1 and 2
    await cache.put(keys[3], "3")  # evicts 1
    await cache.put(keys[4], "4")  # evicts 2
    assert sample("agentscale_step_cache_evictions_total", wf) == 2
    assert [await cache.get(k) for k in keys[:5]] == ["0", None, None, "3", "4"]
    prefix = streams.prefix("test", wf)
    assert await r.zcard(lru_key(prefix, "a")) == 3
    assert len([k async for k in r.scan_iter(match=entries_prefix(prefix, "a") + "*")]) == 3

    # many workers storing at once: the bound holds (the scripts are atomic)
    many = make_cache(r, "sc-bound-many", max_entries=10)
    await asyncio.gather(*(many.put(many.key({"n": i}), str(i)) for i in range(200)))
    prefix = streams.prefix("test", "sc-bound-many")
    assert len([k async for k in r.scan_iter(match=entries_prefix(prefix, "a") + "*")]) == 10
    assert await r.zcard(lru_key(prefix, "a")) == 10
    assert sample("agentscale_step_cache_evictions_total", "sc-bound-many") == 190
    await r.aclose()


async def test_outputs_over_the_entry_size_are_not_stored(redis_server: RedisServer) -> None:
    r = streams.redis_client(redis_server.url)
    cache = make_cache(r, "sc-big", max_entry_bytes=1024)
    k = cache.key({"q": 1})
    await cache.put(k, '"' + "é" * 600 + '"')  # 602 characters, 1202 bytes
    assert await cache.get(k) is None
    assert sample("agentscale_step_cache_skipped_total", "sc-big") == 1
    await r.aclose()


async def test_an_entry_costs_redis_a_few_hundred_bytes_besides_its_output(redis_server: RedisServer) -> None:
    """What docs/tuning.md tells users to size Redis by: MEMORY USAGE of one entry plus its share of the LRU
    set (330 bytes measured at 10,000 entries, Redis 7.0), for a one-byte output."""
    r = streams.redis_client(redis_server.url)
    wf = "sc-memory"
    cache = make_cache(r, wf, max_entries=100_000)
    n = 2000
    for i in range(0, n, 100):
        await asyncio.gather(*(cache.put(cache.key({"q": f"query {j}"}), "1") for j in range(i, i + 100)))
    entry = await r.memory_usage(cache.entries + cache.key({"q": "query 5"}))
    lru = await r.memory_usage(lru_key(streams.prefix("test", wf), "a"), samples=0)
    per_entry = entry + lru / n
    assert 100 < per_entry < 512, per_entry
    await r.aclose()


async def test_redis_failures_are_misses_never_errors(redis_server: RedisServer) -> None:
    r = streams.redis_client(redis_server.url)
    wf = "sc-fail"
    cache = make_cache(r, wf)
    k = cache.key({"q": 1})
    await r.set(lru_key(streams.prefix("test", wf), "a"), "not a sorted set")  # every script now fails
    assert await cache.get(k) is None
    await cache.put(k, "1")
    assert sample("agentscale_step_cache_errors_total", wf, op="get") == 1
    assert sample("agentscale_step_cache_errors_total", wf, op="put") == 1
    await asyncio.to_thread(redis_server.stop)  # and with Redis gone altogether
    assert await cache.get(k) is None
    await cache.put(k, "1")
    assert sample("agentscale_step_cache_errors_total", wf, op="get") == 2
    assert sample("agentscale_step_cache_errors_total", wf, op="put") == 2
    assert sample("agentscale_step_cache_hits_total", wf) == 0
    await r.aclose()


def test_settings_come_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "AGENTSCALE_RESULT_CACHE_TTL_S": "30",
            "AGENTSCALE_RESULT_CACHE_MAX_ENTRIES": "7",
            "AGENTSCALE_RESULT_CACHE_MAX_ENTRY_BYTES": "2048",
            "AGENTSCALE_RESULT_CACHE_VERSION": "abc",
        }
    )
    assert (s.result_cache_ttl_s, s.result_cache_max_entries) == (30, 7)
    assert (s.result_cache_max_entry_bytes, s.result_cache_version) == (2048, "abc")
    assert Settings.from_env({}).result_cache_ttl_s == 0  # off unless the operator renders it


# ----------------------------------------------------------------------------------------- in the runtime

GRAPH = Graph.from_dict({"steps": {"a": {"next": ["b"]}, "b": {}}})
ECHO = "tests.test_step_cache:counting_echo"


async def _run(flow: Any, payload: Any) -> Any:
    code, _, body = await flow.post("/v1/runs/sync", {"input": payload})
    assert code == 200, body
    return body["output"]["b"]


async def test_a_repeated_input_skips_the_step_and_a_different_one_does_not(
    redis_server: RedisServer,
) -> None:
    wf = "sc-flow"
    async with start_flow(redis_server, wf, {"a": ECHO, "b": ECHO}, GRAPH, result_cache_ttl_s=60) as flow:
        pairs = [COLLIDING[i] for i in (0, 2, 3, 4, 5)]  # ten distinct inputs
        for one, other in pairs:
            assert await _run(flow, one) == {"echo": {"echo": one}}
            assert await _run(flow, other) == {"echo": {"echo": other}}
            assert await _run(flow, one) == {"echo": {"echo": one}}  # a hit, with its own input's answer
        n = len(pairs)
        for step in ("a", "b"):
            assert sample("agentscale_step_cache_hits_total", wf, step) == n
            assert sample("agentscale_step_cache_misses_total", wf, step) == 2 * n
        assert CALLS[wf] == 2 * (2 * n)  # each step ran once per distinct input

        # Redis refusing step a's cache scripts: a is computed (and b, whose input is known, is a hit)
        a = next(w for w in flow.workers if w.settings.step == "a")
        await a.redis.set(lru_key(a.prefix, "a"), "not a sorted set")
        before = CALLS[wf]
        assert await _run(flow, pairs[0][0]) == {"echo": {"echo": pairs[0][0]}}
        assert CALLS[wf] == before + 1
        assert sample("agentscale_step_cache_errors_total", wf, op="get") == 1
        assert sample("agentscale_step_cache_errors_total", wf, op="put") == 1
        assert sample("agentscale_step_cache_hits_total", wf, "b") == n + 1


@pytest.mark.triton
async def test_a_cached_step_makes_no_model_call(redis_server: RedisServer, triton: TritonServer) -> None:
    """The recommendation workflow with its encode step cached: the same query twice calls the query encoder
    once, and the cached answer is the one the model gave."""
    wf = "shop-recs"
    handlers = {s: h for s, (_, _, h) in WORKFLOWS[wf].items()}
    async with start_flow(
        redis_server,
        wf,
        handlers,
        graph(wf),
        triton,
        validator=VALIDATORS[wf],
        result_cache_ttl_s=60,
        result_cache_max_entries=1000,
    ) as flow:
        encode = next(w for w in flow.workers if w.settings.step == "encode")
        model = encode.settings.model

        def model_calls() -> float:
            name = "agentscale_triton_request_seconds_count"
            return sample(name, wf, "encode", model=model)

        hits = sample("agentscale_step_cache_hits_total", wf, "encode")
        x = sample_input(wf, 7)
        first = await flow.post("/v1/runs/sync", {"input": x})
        calls = model_calls()
        assert calls >= 1
        second = await flow.post("/v1/runs/sync", {"input": x})
        assert first[0] == second[0] == 200
        assert_close(second[2]["output"], first[2]["output"])
        assert model_calls() == calls  # the encode step was answered from the cache
        assert sample("agentscale_step_cache_hits_total", wf, "encode") == hits + 1
        other = await flow.post("/v1/runs/sync", {"input": sample_input(wf, 8)})
        assert other[0] == 200 and model_calls() > calls
