"""Damping: what keeps a recommendation from becoming a flap. Each function is one rule, pure, with the time
passed in. ``decide`` applies them in order; docs/tuning.md lists them with their knobs.
"""

from __future__ import annotations

import math

from agentscale.resource_controller import queueing as Q
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.snapshot import Part, PartKind


# -- panic (Knative's burst mode) -------------------------------------------------------------------------
def panic_need(part: Part) -> tuple[float, float] | None:
    """(short-window rate, service time) when both are known, else None."""
    short, service_s = part.signals.arrival_rps_short, part.service_time_s()
    if short is None or service_s is None:
        return None
    return short, service_s


def panic_replicas(part: Part, cfg: PolicyConfig) -> int | None:
    """Replicas the short-window rate needs at the target utilization; None when unknown."""
    need = panic_need(part)
    return None if need is None else Q.little_replicas(need[0], need[1], cfg.target_utilization)


def panic_triggered(need: int | None, current: int, cfg: PolicyConfig) -> bool:
    """The short window needs at least ``panic_threshold`` x the current replicas (at least 1 counted)."""
    return need is not None and need >= cfg.panic_threshold * max(current, 1)


def panic_until(triggered_at: float | None, cfg: PolicyConfig) -> float | None:
    """Panic lasts until a stable window has passed without a new trigger."""
    return None if triggered_at is None else triggered_at + cfg.panic_stable_window_s


# -- scale to zero and back --------------------------------------------------------------------------------
def work_signals(part: Part) -> tuple[float | None, ...]:
    """The signals that say whether work is arriving or waiting: the arrival rates, and what waits (a step's
    lag; a model server's queue time, 0 when it served nothing)."""
    s = part.signals
    waiting = s.queue_lag if part.kind == PartKind.step else s.queue_time_s
    return (s.arrival_rps, waiting, s.arrival_rps_short)


def has_work(part: Part) -> bool:
    """Any known arrival or lag (one signal is enough to wake a part at zero)."""
    return any(v is not None and v > 0 for v in work_signals(part))


def idle(part: Part) -> bool | None:
    """No arrivals and nothing waiting; None when the stable rate or what waits is unknown."""
    rate, lag, short = work_signals(part)
    if rate is None or lag is None:
        return None
    return rate <= 0 and lag <= 0 and (short is None or short <= 0)


def next_idle_since(was: float | None, idle_now: bool | None, now: float) -> float | None:
    """Idle must be seen continuously: unknown or busy resets it."""
    if not idle_now:
        return None
    return now if was is None else was


# -- stabilization window (the HPA's scale-down behaviour) ------------------------------------------------
def remember(
    history: tuple[tuple[float, int], ...], now: float, recommendation: int, current: int, window_s: float
) -> tuple[tuple[float, int], ...]:
    """The window's recommendations with this one added; a part seen for the first time starts with its
    current replicas as if recommended now, so it cannot scale down for one window (e.g. after a leader
    change loses the state)."""
    if window_s <= 0:
        return ((now, recommendation),)
    if not history:
        history = ((now, current),)
    start = now - window_s
    return (*(e for e in history if start <= e[0] <= now), (now, recommendation))


def stabilized_down(history: tuple[tuple[float, int], ...]) -> int:
    """The highest recommendation in the window: scale-down goes no lower."""
    return max(r for _, r in history)


def remember_peak(
    peaks: tuple[tuple[float, int], ...], now: float, peak: int | None, window_s: float
) -> tuple[tuple[float, int], ...]:
    """The drain peaks within ``window_s``, with ``peak`` (a count a backlog raised) added when not None."""
    start = now - window_s
    kept = tuple(e for e in peaks if start <= e[0] <= now)
    return kept if peak is None or window_s <= 0 else (*kept, (now, peak))


# -- tolerance, cooldown, step limits ----------------------------------------------------------------------
def within_tolerance(current: int, wanted: int, cfg: PolicyConfig) -> bool:
    """A change of at most ``tolerance`` x current replicas is noise (never at zero)."""
    return current > 0 and abs(wanted - current) <= cfg.tolerance * current


def cooling_down(last_change_at: float | None, now: float, up: bool, cfg: PolicyConfig) -> float:
    """Seconds left before a change in this direction is allowed (0 when allowed)."""
    if last_change_at is None:
        return 0.0
    wait = cfg.cooldown_up_s if up else cfg.cooldown_down_s
    return max(0.0, last_change_at + wait - now)


def max_up(current: int, cfg: PolicyConfig) -> int:
    """The most replicas one cycle may reach going up."""
    return current + max(cfg.max_up_pods, math.ceil(current * (cfg.max_up_factor - 1.0)))


def max_down(current: int, cfg: PolicyConfig) -> int:
    """The fewest replicas one cycle may reach going down."""
    return max(0, current - max(cfg.max_down_pods, math.floor(current * cfg.max_down_fraction)))
