"""Unit tests of admission control at the gateway."""

from __future__ import annotations

import pytest
from agentscale_worker.admission import RateMeter, admit, priority_share


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
