"""Unit tests of the pure parts: graph, backoff, batching, balancing, admission."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from agentscale_worker.config import Graph, GraphError, Settings
from agentscale_worker.examples import graph
from agentscale_worker.policies import Balancer, BatchPolicy, RateMeter, admit, backoff_s, priority_share
from agentscale_worker.triton import parse_static


def test_graph_sources_sinks_and_join_predecessors() -> None:
    g = graph("driving-perception")
    assert g.sources == ("detect",)
    assert g.sinks == ("plan",)
    assert g.predecessors("plan") == ("estimate-depth", "track")
    assert g.topological_order()[0] == "detect" and g.topological_order()[-1] == "plan"
    assert Graph.from_json(g.to_json()) == g


def test_graph_rejects_cycles_and_unknown_steps() -> None:
    with pytest.raises(GraphError, match="cycle"):
        Graph.from_dict({"steps": {"a": {"next": ["b"]}, "b": {"next": ["a"]}, "c": {"next": ["a"]}}})
    with pytest.raises(GraphError, match="unknown steps"):
        Graph.from_dict({"steps": {"a": {"next": ["zz"]}}})
    with pytest.raises(GraphError, match="not JSON"):
        Graph.from_json("{")


def test_settings_defaults_and_env() -> None:
    s = Settings.from_env({})
    assert s.concurrency == 8 and s.load_balancing == "least-outstanding" and s.graph.sinks == ("main",)
    env = {
        "AGENTSCALE_GRAPH": graph("shop-recs").to_json(),
        "AGENTSCALE_STEP": "rank",
        "AGENTSCALE_BATCH_MAX_SIZE": "16",
        "AGENTSCALE_BATCH_MAX_WAIT_MS": "2.5",
        "AGENTSCALE_PRIORITY": "",
    }
    s = Settings.from_env(env)
    assert (s.step, s.batch_max_size, s.batch_max_wait_ms, s.priority) == ("rank", 16, 2.5, 0)
    with pytest.raises(GraphError, match="not in the graph"):
        Settings.from_env({**env, "AGENTSCALE_STEP": "nope"})


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        cap = min(2.0, 0.1 * 2 ** (attempt - 1))
        samples = [backoff_s(attempt, 0.1, 2.0, rng) for _ in range(200)]
        assert all(0 <= x <= cap for x in samples)
        assert max(samples) > cap * 0.8  # full jitter spreads over the range
    assert len({backoff_s(3, 0.1, 2.0, rng) for _ in range(10)}) == 10


def test_batch_policy_flushes_when_full_or_old() -> None:
    p = BatchPolicy(max_size=4, max_wait_s=0.005)
    assert not p.flush_now(0, 1.0)
    assert not p.flush_now(3, 0.001)
    assert p.flush_now(4, 0.0)
    assert p.flush_now(1, 0.005)
    assert p.take(10) == 4 and p.take(2) == 2
    assert p.wait_left_s(0.002) == pytest.approx(0.003)
    assert BatchPolicy().flush_now(1, 0.0)  # batching off: send at once


def test_least_outstanding_picks_the_idlest() -> None:
    b = Balancer("least-outstanding", random.Random(0))
    b.set_endpoints(["a", "b", "c"])
    b.outstanding.update(a=3, b=1, c=2)
    assert b.acquire() == "b"
    assert b.outstanding["b"] == 2
    assert b.choose() in {"b", "c"}
    b.release("b")
    b.release("b")
    b.release("b")
    assert b.outstanding["b"] == 0  # never negative


def test_power_of_two_never_picks_the_most_loaded_of_three() -> None:
    b = Balancer("power-of-two", random.Random(0))
    b.set_endpoints(["a", "b", "c"])
    b.outstanding.update(a=9, b=0, c=1)
    assert "a" not in {b.choose() for _ in range(200)}


def test_round_robin_ignores_load_and_endpoint_changes_keep_counts() -> None:
    b = Balancer("round-robin")
    b.set_endpoints(["a", "b"])
    b.outstanding["a"] = 100
    assert Counter(b.choose() for _ in range(10)) == {"a": 5, "b": 5}
    b.set_endpoints(["a", "c"])
    assert b.outstanding == {"a": 100, "c": 0}
    with pytest.raises(ValueError, match="not one of"):
        Balancer("random")
    with pytest.raises(LookupError):
        Balancer().choose()


def test_least_outstanding_shifts_load_off_a_slow_endpoint() -> None:
    """Simulated: endpoint 'slow' takes 4 ticks per request, 'fast' 1; least-outstanding sends it less."""
    for strategy, expect_slow_share in (("least-outstanding", 0.35), ("round-robin", 0.5)):
        b = Balancer(strategy, random.Random(0))
        b.set_endpoints(["fast", "slow"])
        busy: list[tuple[int, str]] = []
        sent: Counter[str] = Counter()
        for tick in range(2000):
            for t, e in [x for x in busy if x[0] <= tick]:
                busy.remove((t, e))
                b.release(e)
            e = b.acquire()
            sent[e] += 1
            busy.append((tick + (4 if e == "slow" else 1), e))
        share = sent["slow"] / sum(sent.values())
        assert share <= expect_slow_share + 0.01, (strategy, share)


def test_least_latency_cost_is_estimate_times_outstanding_plus_one() -> None:
    b = Balancer("least-latency", random.Random(0), decay_s=10.0)
    b.set_endpoints(["fast", "slow"])
    assert b.cost("fast") == 0.0  # nothing observed anywhere yet
    b.observe("fast", 0.010, now=0.0)
    assert b.cost("slow") == pytest.approx(0.010)  # unobserved: the mean of the others
    b.observe("slow", 0.030, now=0.0)
    assert b.choose() == "fast"
    b.outstanding.update(fast=2)  # 0.010 x 3 = 0.030 x 1: a tie, either may win
    assert {b.choose() for _ in range(50)} == {"fast", "slow"}
    b.outstanding.update(fast=3)  # 0.040 > 0.030: the slow one is now cheaper
    assert b.choose() == "slow"


def test_least_latency_estimate_is_a_time_decayed_ewma_of_per_request_time() -> None:
    b = Balancer("least-latency", decay_s=10.0)
    b.set_endpoints(["a"])
    b.observe("a", 0.010, now=0.0)
    b.observe("a", 0.110, now=10.0)  # one time constant later: e^-1 of the old value remains
    expect = 0.010 * math.exp(-1) + 0.110 * (1 - math.exp(-1))
    assert b.ewma_s["a"] == pytest.approx(expect)
    b.outstanding["a"] = 1
    b.release("a", 0.300, now=10.0, depth=3)  # sent behind two others: 0.100 per request; no time passed
    assert b.ewma_s["a"] == pytest.approx(expect) and b.outstanding["a"] == 0
    b.set_endpoints(["b"])  # a replica that left forgets its estimate
    assert b.ewma_s == {} and b.outstanding == {"b": 0}


def test_peak_ewma_is_finagles_estimate() -> None:
    b = Balancer("peak-ewma", decay_s=10.0)
    assert b.peak and not b.per_request
    b.set_endpoints(["a"])
    b.observe("a", 0.010, now=0.0)
    b.outstanding["a"] = 1
    b.release("a", 0.300, now=0.0, depth=3)  # raw latency, and a slower one replaces the estimate at once
    assert b.ewma_s["a"] == pytest.approx(0.300)
    b.observe("a", 0.010, now=10.0)  # and decays like the EWMA
    assert b.ewma_s["a"] == pytest.approx(0.300 * math.exp(-1) + 0.010 * (1 - math.exp(-1)))


def test_least_latency_sends_little_to_a_slow_endpoint_at_light_load() -> None:
    """Simulated open loop: one request every 2 ticks; 'slow' takes 4 ticks, 'fast' 1. Least-outstanding
    splits idle-time ties evenly, so half the requests wait 4 ticks; least-latency learns to avoid 'slow'."""
    shares = {}
    for strategy in ("least-outstanding", "least-latency"):
        b = Balancer(strategy, random.Random(0), decay_s=50.0)
        b.set_endpoints(["fast", "slow"])
        busy: list[tuple[int, int, str, int]] = []
        sent: Counter[str] = Counter()
        for tick in range(0, 4000, 2):
            for done, start, e, depth in [x for x in busy if x[0] <= tick]:
                busy.remove((done, start, e, depth))
                b.release(e, float(done - start), now=float(tick), depth=depth)
            e = b.acquire()
            sent[e] += 1
            busy.append((tick + (4 if e == "slow" else 1), tick, e, b.outstanding[e]))
        shares[strategy] = sent["slow"] / sum(sent.values())
    assert shares["least-outstanding"] > 0.3
    assert shares["least-latency"] < 0.05, shares


def test_admission_follows_littles_law() -> None:
    assert admit(backlog=3, throughput_rps=0, p95_budget_ms=100).admit  # small backlog always
    assert admit(backlog=50, throughput_rps=0, p95_budget_ms=100).admit  # cold start: no rate yet
    assert not admit(backlog=500, throughput_rps=0, p95_budget_ms=100).admit
    ok = admit(backlog=40, throughput_rps=100, p95_budget_ms=500)  # 410 ms expected
    assert ok.admit and ok.estimated_ms == pytest.approx(410)
    shed = admit(backlog=99, throughput_rps=100, p95_budget_ms=500)
    assert not shed.admit and shed.retry_after_s == 1
    slow = admit(backlog=999, throughput_rps=100, p95_budget_ms=500)
    assert slow.retry_after_s == 10  # (1000 - 50) / 100 rounded up
    assert not admit(backlog=10, throughput_rps=0, p95_budget_ms=100, fallback_rps=10).admit


def test_low_priority_is_shed_first() -> None:
    assert priority_share(5, 5) == 1.0 and priority_share(9, 5) == 1.0
    assert priority_share(3, 5) == pytest.approx(0.8)
    assert priority_share(-100, 5) == 0.5
    kw = dict(backlog=70, throughput_rps=100, p95_budget_ms=1000)
    assert admit(share=priority_share(5, 5), **kw).admit
    assert not admit(share=priority_share(0, 5), **kw).admit  # share 0.5 -> 500 ms limit, 710 expected


def test_rate_meter_window() -> None:
    m = RateMeter(window_s=2.0)
    m.add(0.0, 10)
    m.add(1.5, 10)
    assert m.rate(1.9) == 10.0
    assert m.rate(3.0) == 5.0
    assert m.rate(10.0) == 0.0


def test_static_endpoints_or_dns() -> None:
    assert parse_static("a:1,b", 8001) == ["a:1", "b:8001"]
    assert parse_static("127.0.0.1:9", 8001) == ["127.0.0.1:9"]
    assert parse_static("wf-model", 8001) is None
