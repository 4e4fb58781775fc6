"""Unit tests of client-side micro-batching (when a batch goes out)."""

from __future__ import annotations

import pytest
from agentscale_worker.batching import BatchWindow


def test_batch_window_flushes_when_full_or_old() -> None:
    p = BatchWindow(max_size=4, max_wait_s=0.005)
    assert not p.flush_now(0, 1.0)
    assert not p.flush_now(3, 0.001)
    assert p.flush_now(4, 0.0)
    assert p.flush_now(1, 0.005)
    assert p.take(10) == 4 and p.take(2) == 2
    assert p.wait_left_s(0.002) == pytest.approx(0.003)
    assert BatchWindow().flush_now(1, 0.0)  # batching off: send at once
