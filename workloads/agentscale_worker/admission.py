"""Admission control at the gateway: admit a run or shed it, from the backlog and the completion rate
(Little's law). Pure; the caller feeds time."""

from __future__ import annotations

import math
from dataclasses import dataclass


def priority_share(priority: int, workflow_priority: int) -> float:
    """Fraction of the latency budget a request may use to queue.

    Requests at or above the workflow's priority get all of it; each level below loses 10%, down to 50%,
    so low-priority traffic is shed first when the queue grows."""
    return max(0.5, 1.0 - 0.1 * max(0, workflow_priority - priority))


@dataclass(frozen=True)
class Admission:
    admit: bool
    estimated_ms: float
    retry_after_s: int = 0


def admit(
    backlog: float,
    throughput_rps: float,
    p95_budget_ms: float,
    share: float = 1.0,
    min_backlog: int = 8,
    fallback_rps: float = 0.0,
    cold_limit: int = 128,
) -> Admission:
    """Admit one more run, or shed it?

    By Little's law a run arriving now spends about ``(backlog + 1) / throughput`` in the system, where
    backlog is runs accepted and not finished and throughput the recent completion rate. Admit while that
    stays within ``share`` of the p95 budget. A small backlog is always admitted (nothing to estimate from
    yet). With no completion rate at all (cold start, or a stalled pipeline) and no fallback rate, admit up
    to ``cold_limit`` runs. ``retry_after_s`` is the time the excess backlog needs to drain."""
    rate = throughput_rps if throughput_rps > 0 else fallback_rps
    if backlog < min_backlog:
        est = (backlog + 1) / rate * 1000 if rate > 0 else 0.0
        return Admission(True, est)
    if rate <= 0:
        return Admission(backlog < cold_limit, math.inf, 0 if backlog < cold_limit else 1)
    est_ms = (backlog + 1) / rate * 1000
    limit_ms = p95_budget_ms * share
    if est_ms <= limit_ms:
        return Admission(True, est_ms)
    excess = backlog + 1 - limit_ms / 1000 * rate
    return Admission(False, est_ms, max(1, math.ceil(excess / rate)))


class RateMeter:
    """Completions per second over a sliding window, fed with event times."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self.events: list[float] = []

    def add(self, t: float, n: int = 1) -> None:
        self.events.extend([t] * n)

    def rate(self, now: float) -> float:
        cut = now - self.window_s
        i = 0
        while i < len(self.events) and self.events[i] < cut:
            i += 1
        if i:
            del self.events[:i]
        return len(self.events) / self.window_s


def capacity(
    throughput_rps: float,
    p95_budget_ms: float,
    share: float = 1.0,
    min_backlog: int = 8,
    fallback_rps: float = 0.0,
    cold_limit: int = 128,
) -> float:
    """The backlog :func:`admit` lets in with the same arguments: what fair shares divide."""
    rate = throughput_rps if throughput_rps > 0 else fallback_rps
    if rate <= 0:
        return float(cold_limit)
    return max(float(min_backlog), rate * p95_budget_ms * share / 1000)


def fair_share(capacity_runs: float, active_clients: int, floor: int = 1) -> int:
    """Runs one client may hold when ``active_clients`` (itself included) hold runs: an equal split."""
    return max(floor, math.floor(capacity_runs / max(1, active_clients)))


def admit_client(
    decision: Admission,
    held: int,
    share: int,
    others_over_share: bool,
    backlog: float,
    capacity_runs: float,
    throughput_rps: float = 0.0,
) -> Admission:
    """Per-client fair share on top of the workflow's decision.

    A client holding its share (``held`` runs accepted and not finished) is shed even when the queue has
    room, so one client cannot take it all. A client under its share is admitted even when the queue is
    full if another client holds more than its share (the queue is full of their runs, and they are shed
    until it drains), as long as the backlog stays under twice the capacity. The quiet client's first runs
    may then wait past the objective; it is not starved."""
    if held >= share:
        excess = held + 1 - share
        wait = math.ceil(excess / throughput_rps) if throughput_rps > 0 else 1
        return Admission(False, decision.estimated_ms, max(1, decision.retry_after_s, wait))
    if decision.admit or (others_over_share and backlog < 2 * capacity_runs):
        return Admission(True, decision.estimated_ms)
    return decision
