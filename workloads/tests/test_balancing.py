"""Unit tests of load balancing over replicas, and of the endpoint list it balances over."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from agentscale_worker.balancing import Balancer
from agentscale_worker.triton import parse_static


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


def test_static_endpoints_or_dns() -> None:
    assert parse_static("a:1,b", 8001) == ["a:1", "b:8001"]
    assert parse_static("127.0.0.1:9", 8001) == ["127.0.0.1:9"]
    assert parse_static("wf-model", 8001) is None
