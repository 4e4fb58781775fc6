"""Unit tests of admission control at the gateway."""

from __future__ import annotations

import pytest
from agentscale_worker.admission import (
    Admission,
    RateMeter,
    admit,
    admit_client,
    capacity,
    fair_share,
    priority_share,
)
from agentscale_worker.clients import ClientBook


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


def test_fair_share_splits_the_capacity_and_protects_a_quiet_client() -> None:
    assert capacity(0, 100, min_backlog=8) == 128  # cold: no rate known
    assert capacity(0, 100, fallback_rps=10, min_backlog=8) == 8  # 1 run of budget, the floor wins
    assert capacity(200, 500) == 100 and capacity(200, 500, share=0.5) == 50
    assert fair_share(8, 1) == 8 and fair_share(8, 2) == 4 and fair_share(8, 3) == 2 and fair_share(1, 5) == 1
    full = Admission(False, 900.0, 1)
    room = Admission(True, 50.0)
    # the noisy client at its share is shed even with room in the queue; the wait covers its excess
    assert not admit_client(room, held=4, share=4, others_over_share=False, backlog=4, capacity_runs=8).admit
    assert admit_client(full, 9, 4, False, 12, 8, throughput_rps=2).retry_after_s == 3  # 6 over at 2/s
    # the quiet one gets in while the queue is full of an over-share client's runs, up to twice the capacity
    assert admit_client(full, held=0, share=4, others_over_share=True, backlog=8, capacity_runs=8).admit
    assert not admit_client(full, held=0, share=4, others_over_share=True, backlog=16, capacity_runs=8).admit
    # a full queue nobody is over their share in stays full
    assert not admit_client(full, held=0, share=4, others_over_share=False, backlog=8, capacity_runs=8).admit


def test_client_book_counts_runs_per_client() -> None:
    book = ClientBook()
    assert book.add("a", "r1", 0.0) and book.add("a", "r2", 0.0) and book.add("b", "r3", 5.0)
    assert not book.add("b", "r1", 6.0)  # an id held here is not booked twice
    assert (book.holds("a"), book.holds("b"), book.active("c"), book.active("a")) == (2, 1, 3, 2)
    assert book.most_held_by_others("b") == 2 and book.most_held_by_others("a") == 1
    book.release("r1")
    book.release("r1")  # twice: no effect
    book.release("unknown")
    assert book.holds("a") == 1
    assert book.prune(now=100.0, max_age_s=96.0) == 1  # r2 (t=0) is forgotten, r3 (t=5) kept
    assert book.held == {"b": 1} and len(book) == 1
