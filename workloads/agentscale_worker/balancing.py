"""Load balancing over model-server replicas: which endpoint gets the next request (pure; time and randomness
are injectable for tests)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

STRATEGIES = ("least-outstanding", "power-of-two", "round-robin", "least-latency", "peak-ewma")


class Balancer:
    """Chooses an endpoint and tracks outstanding requests (and, for least-latency, latency) per endpoint.

    least-outstanding: the endpoint with the fewest requests in flight from this client (ties at random).
    power-of-two: two endpoints at random, the less loaded of them.
    round-robin: in turn, blind to load (the baseline).
    least-latency: two endpoints at random (every endpoint when there are at most two), the one with the
    lowest predicted latency of one more request, ``estimate x (outstanding + 1)`` (the cost of Finagle's and
    Linkerd's peak-EWMA balancer). ``estimate`` is an EWMA, time constant ``decay_s``, of the time one
    request occupies the endpoint: each observed latency divided by the requests that were in flight there
    when it was sent (``depth``, itself included). Finagle uses the raw latency, which already contains the
    queueing that ``outstanding`` counts again, and takes its peak (a slower observation replaces the
    estimate at once); with that double count and a few latency spikes a fast replica soon looks as slow as
    a slow one (see docs/benchmarks.md). peak-ewma: least-latency with Finagle's estimate (``peak`` on,
    ``per_request`` off). An endpoint without observations costs the mean of the others (zero when none has
    any), so a new replica gets traffic.

    Callers pass the observed latency and depth to :meth:`release`; ``now`` is injectable for tests."""

    def __init__(
        self,
        strategy: str = "least-outstanding",
        rng: random.Random | None = None,
        decay_s: float = 2.0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"load balancing {strategy!r} is not one of {STRATEGIES}")
        self.strategy = strategy
        self.rng = rng or random.Random()
        self.decay_s = decay_s
        finagle = strategy == "peak-ewma"
        self.peak = finagle  # jump up to a slower observation at once
        self.per_request = not finagle  # False: the raw latency instead of latency / depth
        self.outstanding: dict[str, int] = {}
        self.ewma_s: dict[str, float] = {}  # endpoint -> per-request time estimate (least-latency)
        self._stamp: dict[str, float] = {}  # endpoint -> time of its last observation
        self._rr = 0

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Replace the endpoint set, keeping the counts and estimates of endpoints that stay."""
        self.outstanding = {e: self.outstanding.get(e, 0) for e in endpoints}
        self.ewma_s = {e: v for e, v in self.ewma_s.items() if e in self.outstanding}
        self._stamp = {e: v for e, v in self._stamp.items() if e in self.outstanding}

    @property
    def endpoints(self) -> list[str]:
        return list(self.outstanding)

    def cost(self, endpoint: str) -> float:
        """least-latency: the predicted latency of one more request, estimate x (outstanding + 1)."""
        est = self.ewma_s.get(endpoint)
        if est is None:
            known = list(self.ewma_s.values())
            est = sum(known) / len(known) if known else 0.0
        return est * (self.outstanding.get(endpoint, 0) + 1)

    def choose(self) -> str:
        eps = list(self.outstanding)
        if not eps:
            raise LookupError("no endpoints")
        if self.strategy == "round-robin":
            self._rr = (self._rr + 1) % len(eps)
            return eps[self._rr]
        if self.strategy == "power-of-two":
            pair = self.rng.sample(eps, 2) if len(eps) >= 2 else eps
            return min(pair, key=lambda e: self.outstanding[e])
        if self.strategy in ("least-latency", "peak-ewma"):
            pair = self.rng.sample(eps, 2) if len(eps) > 2 else eps
            costs = {e: self.cost(e) for e in pair}
            low_cost = min(costs.values())
            return self.rng.choice([e for e in pair if costs[e] == low_cost])
        low = min(self.outstanding.values())
        return self.rng.choice([e for e in eps if self.outstanding[e] == low])

    def acquire(self) -> str:
        e = self.choose()
        self.outstanding[e] += 1
        return e

    def observe(self, endpoint: str, latency_s: float, now: float) -> None:
        """Fold one observed per-request time into ``endpoint``'s estimate."""
        if endpoint not in self.outstanding:
            return
        prev = self.ewma_s.get(endpoint)
        if prev is None or (self.peak and latency_s > prev):
            self.ewma_s[endpoint] = latency_s
        else:
            w = math.exp(-max(0.0, now - self._stamp.get(endpoint, now)) / self.decay_s)
            self.ewma_s[endpoint] = prev * w + latency_s * (1 - w)
        self._stamp[endpoint] = now

    def release(
        self, endpoint: str, latency_s: float | None = None, now: float | None = None, depth: int = 1
    ) -> None:
        """One request to ``endpoint`` finished after ``latency_s``; ``depth``: the requests in flight there
        when it was sent, itself included (``outstanding[endpoint]`` right after :meth:`acquire`)."""
        if endpoint in self.outstanding:
            self.outstanding[endpoint] = max(0, self.outstanding[endpoint] - 1)
            if latency_s is not None:
                now = time.monotonic() if now is None else now
                self.observe(endpoint, latency_s / max(1, depth) if self.per_request else latency_s, now)
