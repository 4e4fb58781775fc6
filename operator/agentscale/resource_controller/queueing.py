"""Queueing math: Little's law sizing, backlog drain, and M/M/c (Erlang C) latency. Pure numbers in, numbers
out; rates in requests per second, times in seconds.

M/M/c: Poisson arrivals at rate ``lam``, ``c`` replicas each serving at rate ``mu = 1 / service_s`` with
exponential service times. Real GPU service times vary less than exponential, so the model overestimates
waiting; the SLO policy corrects it online by the ratio of the observed service p95 to the exponential's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

_EPS = 1e-9


def ceil(x: float) -> int:
    """Ceiling that forgives float noise (2.0000000001 -> 2)."""
    return max(0, math.ceil(x - _EPS))


def little_replicas(rate: float, service_s: float, utilization: float) -> int:
    """Replicas that serve ``rate`` requests/s at ``utilization`` each: ceil(rate x service_s / utilization).
    (Little's law: requests in service = rate x time in service.)"""
    return ceil(rate * service_s / utilization)


def erlang_b(c: int, a: float) -> float:
    """Erlang B blocking probability for ``c`` servers at offered load ``a = lam / mu`` (stable recursion)."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Probability an arrival waits in M/M/c with offered load ``a = lam / mu``; 1.0 when ``a >= c`` (the
    queue grows without bound). Textbook check: c=2, a=1 -> 1/3."""
    if c <= 0 or a >= c:
        return 1.0
    if a <= 0:
        return 0.0
    return _c_from_b(c, a, erlang_b(c, a))


def _c_from_b(c: int, a: float, b: float) -> float:
    return c * b / (c - a * (1.0 - b))


def sojourn_tail(t: float, c: int, lam: float, mu: float, p_wait: float) -> float:
    """P(waiting + service > t) in M/M/c, where ``p_wait`` is Erlang C. Waiting is 0 with probability
    1 - p_wait, else exponential at rate theta = c mu - lam; service is exponential at rate mu."""
    return sojourn_tail_at(c, lam, mu, p_wait)(t)


def sojourn_tail_at(c: int, lam: float, mu: float, p_wait: float) -> Callable[[float], float]:
    """:func:`sojourn_tail` as a function of ``t`` alone, what does not depend on ``t`` computed once (a
    quantile's bisection evaluates it some 30 times)."""
    theta = c * mu - lam
    no_wait = 1.0 - p_wait
    if abs(theta - mu) < 1e-12 * mu:

        def erlang2(t: float) -> float:  # waiting + service is Erlang-2: the limit of the general case
            service_tail = math.exp(-mu * t)
            return no_wait * service_tail + p_wait * ((1.0 + mu * t) * service_tail)

        return erlang2
    gap = theta - mu

    def tail(t: float) -> float:
        service_tail = math.exp(-mu * t)
        return no_wait * service_tail + p_wait * ((theta * service_tail - mu * math.exp(-theta * t)) / gap)

    return tail


def mmc_quantile(c: int, lam: float, service_s: float, q: float = 0.95) -> float:
    """The ``q`` quantile of time in system (waiting + service) of M/M/c; inf when c replicas cannot keep
    up. M/M/1 check: time in system is exponential at mu - lam, so p95 = ln(20) / (mu - lam)."""
    mu = 1.0 / service_s
    if c <= 0 or lam >= c * mu:
        return math.inf
    return _quantile(c, lam, mu, erlang_c(c, lam / mu), q)


def _quantile(c: int, lam: float, mu: float, p_wait: float, q: float) -> float:
    target = 1.0 - q
    tail = sojourn_tail_at(c, lam, mu, p_wait)
    lo, hi = 0.0, -math.log(target) / min(mu, c * mu - lam)
    while tail(hi) > target:
        hi *= 2.0
    for _ in range(60):  # bisection: the tail falls monotonically in t; 1e-9 relative is plenty
        if hi - lo <= 1e-9 * hi:
            break
        mid = (lo + hi) / 2.0
        if tail(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def replicas_for_quantile(
    lam: float, service_s: float, target_s: float, lo: int, hi: int, q: float = 0.95
) -> int | None:
    """The fewest replicas in [max(lo, 1), hi] whose M/M/c ``q`` quantile of time in system is at most
    ``target_s``; None when even ``hi`` cannot meet it. No arrivals: the lower bound (at least 1)."""
    first = max(lo, 1)
    if lam <= 0:
        return first if first <= hi else None
    if target_s < -math.log(1.0 - q) * service_s:
        return None  # service alone (no waiting at all) is slower than the target
    mu = 1.0 / service_s
    a = lam / mu
    b = 1.0
    for c in range(1, hi + 1):  # Erlang B carried forward, so the search is linear in c
        b = a * b / (c + a * b)
        if c < first or a >= c:
            continue
        # the quantile is within the target iff the tail beyond the target is within 1 - q (it falls in t)
        if sojourn_tail(target_s, c, lam, mu, _c_from_b(c, a, b)) <= 1.0 - q:
            return c
    return None


def replicas_for_waiting(
    lam: float, service_s: float, wait_s: float, lo: int, hi: int, q: float = 0.95
) -> int | None:
    """The fewest replicas in [max(lo, 1), hi] whose M/M/c waiting time exceeds ``wait_s`` with probability
    at most ``1 - q`` (``P(W > t) = ErlangC x exp(-(c mu - lam) t)``); None when even ``hi`` cannot, or when
    ``wait_s`` < 0 (the service alone is slower than the target). No arrivals: the lower bound (at least 1).
    Textbook check: M/M/1 at rho 0.5 waits more than t with probability 0.5 exp(-(mu - lam) t)."""
    first = max(lo, 1)
    if lam <= 0:
        return first if first <= hi else None
    if wait_s < 0:
        return None
    mu = 1.0 / service_s
    a = lam / mu
    b = 1.0
    for c in range(1, hi + 1):  # Erlang B carried forward, so the search is linear in c
        b = a * b / (c + a * b)
        if c < first or a >= c:
            continue
        if _c_from_b(c, a, b) * math.exp(-(c * mu - lam) * wait_s) <= 1.0 - q:
            return c
    return None


def waiting_scale(k: float, q: float = 0.95) -> float:
    """M/G/c waiting over M/M/c waiting, ``(1 + cs2) / 2`` (Allen-Cunneen), with the service time's squared
    coefficient of variation ``cs2`` read off ``k`` = measured service quantile / the exponential's: 1 for
    exponential service (``cs2`` 1), ``1 / -ln(1 - q)`` for constant service (``cs2`` 0), linear between and
    beyond (a heavier tail than the exponential's waits longer)."""
    constant = 1.0 / -math.log(1.0 - q)
    cs2 = max(0.0, (k - constant) / (1.0 - constant))
    return (1.0 + cs2) / 2.0


def service_quantile(service_s: float, q: float = 0.95) -> float:
    """The ``q`` quantile of one exponential service time of mean ``service_s`` (the model's service)."""
    return -math.log(1.0 - q) * service_s


def drain_rate(backlog: float, within_s: float) -> float:
    """Extra requests/s needed to empty ``backlog`` within ``within_s`` while keeping up with arrivals."""
    if backlog <= 0:
        return 0.0
    return backlog / max(within_s, _EPS)
