"""One policy on one trace, one second at a time: pods that start late, a FIFO queue, what Prometheus sees.

Each second ``t``:

1. at ``t``, a policy whose sync period divides ``t`` reads the :class:`View` (only what was scraped or polled
   by ``t``) and sets the desired replicas; new pods are ready ``startup_s`` later, removed pods go at once
   (not-yet-ready ones first, as a ReplicaSet does);
2. the ready pods are the servers of a multi-server FIFO queue: each waiting message, in arrival order, starts
   on the server free first, if that is before ``t + 1``; its latency is its wait plus its service time;
3. at ``t + 1`` the gauges (messages waiting = queue lag, messages in service = pending) and the counters
   (completions, service-time histogram in the worker's own buckets, busy seconds) are recorded; every
   ``scrape_s`` seconds they are scraped.

Every pod that exists counts for replica-seconds, ready or still starting (it holds its GPU either way). A
message is never dropped (workers process every message of their stream); after the trace ends the same policy
keeps running ``drain_s`` more seconds so late arrivals finish, unbilled for every policy alike. A message not
finished by then counts as a miss. Nothing is shed: admission control is not simulated.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from agentscale.resource_controller.promql import Windows
from agentscale_worker.metrics import LAT_BUCKETS
from numpy.typing import NDArray

ASSUMED_STARTUP_S = 30.0
"""Seconds from a scale-up to a ready pod: ASSUMED for GPU step pods (not measured); CPU step pods with their
image on the node measured 7-18 s in e2e/tests/test_closed_loop.py (docs/benchmarks.md)."""


@dataclass(frozen=True)
class Scenario:
    """What every policy shares on a run: the target, the pods' start-up, the bounds and the sensors."""

    slo_s: float = 0.100
    """The workflow's p95 target (``spec.slo.p95LatencyMs``); a message slower than this is a miss."""
    startup_s: float = ASSUMED_STARTUP_S
    min_replicas: int = 1
    max_replicas: int = 100
    target_lag_per_replica: int = 10
    """Controller queue mode: ``targetQueueLagPerReplica``."""
    scale_down_stabilization_s: int = 120
    """The step's ``scaleDownStabilizationSeconds`` (the API's default)."""
    keda_target: int = 1
    """The KEDA-style scaler's target messages per replica (``run`` picks it on the steady trace)."""
    target_cpu: float = 0.70
    """The HPA's target utilization (``targetCPUUtilization``'s default)."""
    scrape_s: int = 5
    windows: Windows = field(default_factory=Windows)
    drain_s: int = 120

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("scenario: need 1 <= min_replicas <= max_replicas")
        bad = [
            f"{name} = {value} (must be {rule})"
            for name, value, ok, rule in (
                ("slo_s", self.slo_s, self.slo_s > 0, "> 0"),
                ("startup_s", self.startup_s, self.startup_s >= 0, ">= 0"),
                ("scrape_s", self.scrape_s, self.scrape_s >= 1, ">= 1"),
            )
            if not ok
        ]
        if bad:
            raise ValueError(f"scenario: {'; '.join(bad)}")


@dataclass
class Sample:
    """One scrape of the step's series at time ``t``."""

    t: int
    lag: float
    pending: float
    done: float
    service_sum: float
    buckets: NDArray[Any]  # cumulative count per LAT_BUCKETS bound, then +Inf


class View:
    """What the sensors can know at a time: scrapes (Prometheus), per-second gauges (polled directly), CPU."""

    def __init__(self, scenario: Scenario, length: int) -> None:
        self.scenario = scenario
        self.samples: list[Sample] = []
        self.lag = np.zeros(length + 1)
        self.pending = np.zeros(length + 1)
        self.busy = np.zeros(length + 1)  # busy server-seconds within each second
        self.ready = np.zeros(length + 1)  # ready pods during each second

    # -- Prometheus ----------------------------------------------------------------------------------------
    def window(self, now: float, seconds: float) -> list[Sample]:
        return [
            s
            for s in self.samples[-(int(seconds) // self.scenario.scrape_s + 2) :]
            if now - seconds < s.t <= now
        ]

    @staticmethod
    def rate(samples: Sequence[Sample], value: str) -> float | None:
        """``rate()``: the increase between the first and the last sample over the time between them."""
        if len(samples) < 2:
            return None
        first, last = samples[0], samples[-1]
        return float(getattr(last, value) - getattr(first, value)) / (last.t - first.t)

    @staticmethod
    def deriv(samples: Sequence[Sample], value: str) -> float | None:
        """``deriv()``: the least-squares slope of a gauge."""
        if len(samples) < 2:
            return None
        t = np.array([s.t for s in samples], dtype=np.float64)
        y = np.array([getattr(s, value) for s in samples], dtype=np.float64)
        t -= t.mean()
        return float((t * (y - y.mean())).sum() / (t * t).sum())

    def arrival_rps(self, now: float, seconds: float) -> float | None:
        """promql.step_arrivals: completions + growth of lag + growth of pending, never below 0."""
        w = self.window(now, seconds)
        done, lag, pending = self.rate(w, "done"), self.deriv(w, "lag"), self.deriv(w, "pending")
        if done is None or lag is None or pending is None:
            return None
        return max(done + lag + pending, 0.0)

    def mean_service_s(self, now: float) -> float | None:
        """``rate(latency_sum) / rate(latency_count)`` of the worker's read-to-ack histogram."""
        w = self.window(now, self.scenario.windows.stable_s)
        done, total = self.rate(w, "done"), self.rate(w, "service_sum")
        if done is None or total is None or done <= 0:
            return None
        return total / done

    def p95_service_s(self, now: float) -> float | None:
        """``histogram_quantile`` over the worker's buckets in the stable window (Prometheus' way)."""
        w = self.window(now, self.scenario.windows.stable_s)
        if len(w) < 2:
            return None
        return histogram_quantile(self.scenario.windows.quantile, w[-1].buckets - w[0].buckets)

    def queue_lag(self) -> float | None:
        return self.samples[-1].lag if self.samples else None

    # -- polled directly ---------------------------------------------------------------------------------
    def queue_length(self, now: int) -> float:
        """Messages not yet acknowledged at ``now``: waiting plus in service (what a Redis scaler reads)."""
        return float(self.lag[now] + self.pending[now])

    def cpu_utilization(self, now: int, seconds: int = 15) -> float | None:
        """Busy share of the ready pods over the last ``seconds`` (metrics-server's window)."""
        lo = max(0, now - seconds)
        ready = float(self.ready[lo:now].sum())
        return None if ready <= 0 else float(self.busy[lo:now].sum()) / ready


def histogram_quantile(q: float, counts: NDArray[Any], bounds: Sequence[float] = LAT_BUCKETS) -> float | None:
    """PromQL's ``histogram_quantile`` on cumulative bucket counts (``bounds`` then +Inf): linear within the
    bucket, the highest finite bound when the rank falls in +Inf, None without observations."""
    total = float(counts[-1])
    if total <= 0:
        return None
    rank = q * total
    b = int(np.searchsorted(counts, rank, side="left"))
    if b >= len(bounds):
        return float(bounds[-1])
    lower = 0.0 if b == 0 else float(bounds[b - 1])
    below = 0.0 if b == 0 else float(counts[b - 1])
    inside = float(counts[b]) - below
    return lower + (float(bounds[b]) - lower) * ((rank - below) / inside if inside > 0 else 1.0)


class Fleet(Protocol):
    """Who decides the replicas each second: returns (ready servers, pods billed) for second ``t``."""

    events: int

    def at(self, t: int, view: View) -> tuple[int, int]: ...


@dataclass
class Run:
    latency: NDArray[Any]  # per message (arrival order); inf when not finished
    billed: NDArray[Any]  # pods per second of the trace
    ready: NDArray[Any]
    scale_events: int

    def attainment(self, slo_s: float) -> float:
        return float((self.latency <= slo_s).mean()) if len(self.latency) else 1.0


def simulate(
    arrivals: NDArray[Any], service: NDArray[Any], duration_s: int, fleet: Fleet, scenario: Scenario
) -> Run:
    """Replay ``arrivals`` (sorted seconds) with per-message ``service`` times through ``fleet``'s servers."""
    if len(arrivals) != len(service):
        raise ValueError("one service time per arrival")
    end = duration_s + scenario.drain_s
    view = View(scenario, end)
    arr: list[float] = arrivals.tolist()
    svc: list[float] = service.tolist()
    n = len(arr)
    finish = np.full(n, math.inf)
    fin: list[float] = [math.inf] * n
    arrived_by = np.searchsorted(arrivals, np.arange(end + 1, dtype=np.float64), side="left")
    bucket_of = np.searchsorted(np.asarray(LAT_BUCKETS), service, side="left")  # le: bound >= value
    done_per_s = np.zeros(end + 1)
    svc_per_s = np.zeros(end + 1)
    hist_per_s = np.zeros((end + 1, len(LAT_BUCKETS) + 1))
    billed = np.zeros(duration_s, dtype=np.int64)
    ready_s = np.zeros(duration_s, dtype=np.int64)
    servers: list[float] = []  # heap of the time each ready server is next free
    done = service_sum = 0.0
    buckets = np.zeros(len(LAT_BUCKETS) + 1)
    i = 0
    for t in range(end):
        ready, pods = fleet.at(t, view)
        if t < duration_s:
            billed[t], ready_s[t] = pods, ready
        view.ready[t] = ready
        if ready > len(servers):
            for _ in range(ready - len(servers)):
                heapq.heappush(servers, float(t))
        while len(servers) > ready:
            heapq.heappop(servers)  # the one free first goes (a busy one finishes its message anyway)
        first, t1 = i, t + 1.0
        if servers:
            while i < n:
                a = arr[i]
                if a >= t1:
                    break
                free = servers[0]
                start = a if a > free else free
                if start >= t1:
                    break
                f = start + svc[i]
                heapq.heapreplace(servers, f)
                fin[i] = f
                i += 1
        if i > first:
            f_now = np.asarray(fin[first:i])
            finish[first:i] = f_now
            s_now = service[first:i]
            sec = np.minimum(f_now.astype(np.int64), end)
            np.add.at(done_per_s, sec, 1.0)
            np.add.at(svc_per_s, sec, s_now)
            np.add.at(hist_per_s, (sec, bucket_of[first:i]), 1.0)
            starts = f_now - s_now
            view.busy[t] += float((np.minimum(f_now, t1) - starts).sum())
            spill = f_now - t1
            for extra in spill[spill > 0]:  # service past this second (rare: service times are ms)
                s = t + 1
                while extra > 0 and s < end:
                    view.busy[s] += min(extra, 1.0)
                    extra -= 1.0
                    s += 1
        # gauges and counters at t + 1
        now = t + 1
        view.lag[now] = float(arrived_by[now] - i)
        view.pending[now] = float(sum(1 for f in servers if f > now))
        done += done_per_s[t]
        service_sum += svc_per_s[t]
        buckets += hist_per_s[t]
        if now % scenario.scrape_s == 0:
            cumulative = np.cumsum(buckets)
            view.samples.append(Sample(now, view.lag[now], view.pending[now], done, service_sum, cumulative))
    latency = finish - arrivals
    return Run(latency, billed, ready_s, fleet.events)


# -- fleets ----------------------------------------------------------------------------------------------
class Policy(Protocol):
    @property
    def name(self) -> str: ...

    period_s: int

    def decide(self, now: int, current: int, ready: int, view: View) -> int: ...


class Pods:
    """A Deployment's pods: ready ``startup_s`` after creation; a scale-down removes unready ones first."""

    def __init__(self, initial: int, startup_s: float) -> None:
        self.ready_at: list[float] = [0.0] * initial
        self.startup_s = startup_s

    def scale(self, to: int, now: float) -> None:
        if to > len(self.ready_at):
            self.ready_at += [now + self.startup_s] * (to - len(self.ready_at))
        elif to < len(self.ready_at):
            self.ready_at = sorted(self.ready_at)[:to]

    def ready(self, now: float) -> int:
        return sum(1 for r in self.ready_at if r <= now)

    def __len__(self) -> int:
        return len(self.ready_at)


class PolicyFleet:
    """Pods driven by a policy that syncs every ``policy.period_s`` seconds."""

    def __init__(self, policy: Policy, initial: int, scenario: Scenario) -> None:
        self.policy = policy
        self.scenario = scenario
        self.pods = Pods(initial, scenario.startup_s)
        self.events = 0
        self.desired: list[tuple[int, int]] = []

    def at(self, t: int, view: View) -> tuple[int, int]:
        if t > 0 and t % self.policy.period_s == 0:
            current = len(self.pods)
            want = self.policy.decide(t, current, self.pods.ready(t), view)
            want = min(max(want, self.scenario.min_replicas), self.scenario.max_replicas)
            if want != current:
                self.events += 1
                self.pods.scale(want, t)
                self.desired.append((t, want))
        return self.pods.ready(t), len(self.pods)


class PlannedFleet:
    """Replicas fixed in advance per second (oracle, tests): ``ready[t]`` serve, ``billed[t]`` are paid."""

    def __init__(self, ready: NDArray[Any], billed: NDArray[Any] | None = None) -> None:
        self.plan_ready = ready
        self.plan_billed = ready if billed is None else billed
        self.events = int((np.diff(self.plan_billed) != 0).sum())

    def at(self, t: int, view: View) -> tuple[int, int]:
        last = len(self.plan_ready) - 1
        k = min(t, last)
        return int(self.plan_ready[k]), int(self.plan_billed[k])
