"""Client-side micro-batching toward Triton: when a batch goes out (pure; the clock is the caller's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchWindow:
    """When a client-side micro-batch toward Triton goes out: full, or its oldest item waited long enough."""

    max_size: int = 1
    max_wait_s: float = 0.0

    def flush_now(self, queued: int, oldest_age_s: float) -> bool:
        """Send a batch now? Yes when full, or when the oldest item has waited ``max_wait_s``."""
        if queued <= 0:
            return False
        return queued >= self.max_size or oldest_age_s >= self.max_wait_s

    def wait_left_s(self, oldest_age_s: float) -> float:
        return max(0.0, self.max_wait_s - oldest_age_s)

    def take(self, queued: int) -> int:
        return min(queued, self.max_size)
