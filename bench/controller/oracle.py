"""The clairvoyant oracle: the fewest replicas, second by second, that meet the target, the whole trace known.

For each second ``t``, in order, with the queue as the seconds before left it: the fewest ready replicas ``c``
(within the scenario's bounds) such that, were ``c`` held until every message that has arrived by ``t + 1``
has started, at most ``miss_share`` (1%, the attainment target) of those messages would finish later than the
target. That is a greedy per second: a floor in practice, not a proven minimum over all schedules (a test
checks that one replica fewer in any second breaks the rule, and that no policy here serves as well with fewer
replica-seconds).

Start-up: the oracle knows when each replica is needed, so it starts it ``startup_s`` before and pays for it
from then: the k-th replica is billed at ``t`` when it is needed at some second in [t, t + startup_s] (a gap
shorter than the start-up is cheaper to bridge than to restart). So billed(t) = max(need[t .. t + startup_s]).
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.controller.sim import Scenario


def _servers(servers: list[float], c: int, t: float) -> list[float]:
    heap = list(servers)
    while len(heap) > c:
        heapq.heappop(heap)
    heap.extend([t] * (c - len(heap)))
    heapq.heapify(heap)
    return heap


def _misses(arr: list[float], svc: list[float], head: int, upto: int, heap: list[float], slo: float) -> int:
    """Misses among messages [head, upto) with these servers held until all have started."""
    misses = 0
    for i in range(head, upto):
        a = arr[i]
        free = heap[0]
        start = a if a > free else free
        f = start + svc[i]
        heapq.heapreplace(heap, f)
        if f - a > slo:
            misses += 1
    return misses


def need(
    arrivals: NDArray[Any],
    service: NDArray[Any],
    duration_s: int,
    scenario: Scenario,
    miss_share: float = 0.01,
) -> NDArray[Any]:
    """Ready replicas per second of the trace (then ``scenario.drain_s`` more seconds, holding the last)."""
    arr: list[float] = arrivals.tolist()
    svc: list[float] = service.tolist()
    n = len(arr)
    end = duration_s + scenario.drain_s
    arrived_by = np.searchsorted(arrivals, np.arange(1, end + 1, dtype=np.float64), side="left").tolist()
    lo, hi = scenario.min_replicas, scenario.max_replicas
    out = np.zeros(end, dtype=np.int64)
    servers: list[float] = []
    head = 0
    c = lo
    for t in range(end):
        upto = arrived_by[t]
        allowed = math.floor(miss_share * (upto - head))

        def ok(
            k: int,
            t: int = t,
            head: int = head,
            upto: int = upto,
            allowed: int = allowed,
            now: list[float] = servers,
        ) -> bool:
            heap = _servers(now, k, float(t))
            return _misses(arr, svc, head, upto, heap, scenario.slo_s) <= allowed

        if upto > head:
            if ok(c):
                while c > lo and ok(c - 1):
                    c -= 1
            else:
                while c < hi and not ok(c + 1):
                    c += 1
                c = min(c + 1, hi)
        else:
            c = lo
        out[t] = c
        # commit second t with c servers, exactly as the simulator does
        heap = _servers(servers, c, float(t))
        t1 = t + 1.0
        while head < n:
            a = arr[head]
            if a >= t1:
                break
            free = heap[0]
            start = a if a > free else free
            if start >= t1:
                break
            heapq.heapreplace(heap, start + svc[head])
            head += 1
        servers = heap
    return out


def billed(ready: NDArray[Any], startup_s: float) -> NDArray[Any]:
    """Replicas paid per second: each started ``startup_s`` before it is needed (sliding max ahead)."""
    ahead = math.ceil(startup_s)
    padded = np.concatenate([ready, np.full(ahead, ready[-1] if len(ready) else 0)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, ahead + 1)
    return np.asarray(windows.max(axis=1), dtype=np.int64)[: len(ready)]
