"""The decision: one function from a workflow snapshot and the last state to a decision per controlled part
and the next state. No I/O, no clock, no kopf.

Per part, in order (each step can only keep or lower what the step before wanted, except bounds, panic and
wake, which say so in the reason):

1. the mode's rule sizes the part on its planned rate (measured, forecast, fed forward) and budget;
2. fail static: a missing primary signal holds; any missing signal forbids a scale-down;
3. panic: a short-window burst scales up at once to what it needs and forbids scale-down for a stable window;
4. zero: minReplicas 0 parts go to zero after the idle window and back to at least one on any work;
5. bounds; 6. scale-down stabilization (the window's highest recommendation; a count a backlog raised is
   remembered there as what the rate alone needs, and as itself only for the shorter drain window);
7. tolerance band; 8. cooldown; 9. step limits; 10. bounds again (the spec always wins).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agentscale.resource_controller import stabilize as S
from agentscale.resource_controller.budgets import budgets
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.forecast import HoltState, PlannedRate, planned_rates
from agentscale.resource_controller.rules import recommend
from agentscale.resource_controller.snapshot import Bounds, Decision, Part, Rule, WorkflowSnapshot, num
from agentscale.resource_controller.state import PartState, WorkflowState


@dataclass(frozen=True)
class Outcome:
    decisions: tuple[Decision, ...]
    """One per controlled part (modes queue and slo), in the snapshot's order, changed or not."""
    state: dict[str, PartState]
    """What to pass in next cycle (every part, controlled or not: forecasts feed downstream parts)."""
    budgets_s: dict[str, float]
    """Part key -> latency budget (seconds), for status and the docs' worked examples."""


_FIRST_SEEN = PartState()
"""The state of a part seen for the first time (frozen, so one serves every part)."""


def decide(snap: WorkflowSnapshot, state: WorkflowState, cfg: PolicyConfig | None = None) -> Outcome:
    cfg = cfg or PolicyConfig()
    prev = {p.key: state.get(p.key, _FIRST_SEEN) for p in snap.parts}
    rates, holts = planned_rates(snap, {k: s.holt for k, s in prev.items()}, cfg)
    budget = budgets(snap, cfg)
    decisions: list[Decision] = []
    new_state: dict[str, PartState] = {}
    for part in snap.parts:
        before, holt = prev[part.key], holts[part.key]
        if not part.controlled:
            new_state[part.key] = before if before.holt is holt else replace(before, holt=holt)
            continue
        decision, after = decide_part(part, rates[part.key], budget[part.key], before, holt, snap.now, cfg)
        decisions.append(decision)
        new_state[part.key] = after
    return Outcome(tuple(decisions), new_state, budget)


@dataclass
class _Wanted:
    """The number being decided, the rule that set it and why; carried through the damping steps."""

    n: int
    rule: Rule
    why: str
    steady: int | None = None
    """What the rate alone needs when a backlog raised ``n`` (the rule's); cleared by any later rule."""

    def set(self, n: int, rule: Rule, why: str) -> None:
        self.n, self.rule, self.why, self.steady = n, rule, why, None

    def remembered(self, bounds: Bounds) -> int:
        """What the stabilization window keeps: a drain's peak only as the steady need (within bounds)."""
        return self.n if self.steady is None else min(self.n, bounds.clamp(self.steady))


def decide_part(
    part: Part,
    rate: PlannedRate,
    budget_s: float,
    prev: PartState,
    holt: HoltState | None,
    now: float,
    cfg: PolicyConfig,
) -> tuple[Decision, PartState]:
    """One controlled part: ``prev`` is its last state, ``holt`` its forecast already updated this cycle
    (:func:`planned_rates`), kept in the state that comes back."""
    cur, lo, hi = part.replicas, part.bounds.lo, part.bounds.hi
    rec = recommend(part, rate, budget_s, cfg)
    w = _Wanted(rec.replicas, rec.rule, rec.reason, rec.steady)

    # 2. fail static
    if rec.missing and w.n < cur and not rec.hold:
        w.set(cur, Rule.FailStatic, f"{', '.join(rec.missing)} unknown, not scaling down ({w.why})")

    # 3. panic
    need = S.panic_replicas(part, cfg)
    triggered_at = now if S.panic_triggered(need, cur, cfg) else prev.panic_triggered_at
    until = S.panic_until(triggered_at, cfg)
    panic = until is not None and now < until
    if not panic:
        triggered_at = None
    elif need is not None and need > w.n:
        short = num(part.signals.arrival_rps_short or 0.0)
        why = f"panic: short-window {short}/s needs {need}"
        if triggered_at == now:
            why += f" >= {num(cfg.panic_threshold)} x {max(cur, 1)}"
        w.set(need, Rule.Panic, why)

    if panic and w.rule != Rule.Panic:
        w.why += ", in panic"  # no step limit or up cooldown, no scale-down: say so

    # 4. scale to zero and back
    idle_now = S.idle(part) if lo == 0 else None
    idle_since = S.next_idle_since(prev.idle_since, idle_now, now)
    wake = cur == 0 and S.has_work(part)
    to_zero = False
    if idle_now and not panic and idle_since is not None:
        idle_for = now - idle_since
        if cur == 0:
            w.set(0, Rule.Idle, "no arrivals, no lag")
        elif idle_for >= cfg.idle_window_s:
            to_zero = True
            w.set(0, Rule.Idle, f"idle {num(idle_for)} s >= {num(cfg.idle_window_s)} s (no arrivals, no lag)")
        elif w.n < 1:
            w.set(1, Rule.Idle, f"idle {num(idle_for)} s of {num(cfg.idle_window_s)} s before zero")
    if wake and w.n < 1:
        w.set(1, Rule.Wake, "work arrived at zero replicas")

    # 5. bounds
    bounded = part.bounds.clamp(w.n)
    if bounded != w.n:
        steady = w.steady
        w.set(bounded, Rule.Bounds, f"{w.why}, bounded to [{lo}, {hi}]")
        w.steady = steady
    window = part.scale_down_stabilization_s
    history = S.remember(prev.history, now, w.remembered(part.bounds), cur, window)
    peak = w.n if w.steady is not None else None
    peaks = S.remember_peak(prev.drain_peaks, now, peak, min(cfg.drain_stabilization_s, window))

    if w.n < cur and not to_zero:
        _damp_down(w, part, prev, history, peaks, panic, now, cfg)
    elif w.n > cur:
        _damp_up(w, cur, prev, panic, wake, now, cfg)

    # 10. the spec's bounds win over everything, including a current count outside them
    to = part.bounds.clamp(w.n)
    if to != w.n:
        w.set(to, Rule.Bounds, f"{w.why}; outside [{lo}, {hi}]")
    reason = f"{w.why}; {cur} -> {to}" if to != cur else f"{w.why}; stays {cur}"
    decision = Decision(part.key, cur, to, w.rule, reason, rec.missing)
    after = PartState(
        history=history,
        drain_peaks=peaks,
        last_change_at=now if to != cur else prev.last_change_at,
        panic_triggered_at=triggered_at,
        idle_since=idle_since,
        holt=holt,
    )
    return decision, after


def _damp_down(
    w: _Wanted,
    part: Part,
    prev: PartState,
    history: tuple[tuple[float, int], ...],
    peaks: tuple[tuple[float, int], ...],
    panic: bool,
    now: float,
    cfg: PolicyConfig,
) -> None:
    cur = part.replicas
    if panic:
        w.set(cur, Rule.Panic, f"in panic, not scaling down ({w.why})")
        return
    # 6. stabilization: the highest recommendation within the window (a drain's peak within its own)
    high = min(S.stabilized_down(history), cur)
    peak = min(max((r for _, r in peaks), default=0), cur)
    if peak > max(high, w.n):
        window = num(min(cfg.drain_stabilization_s, part.scale_down_stabilization_s))
        w.set(peak, Rule.Stabilization, f"highest backlog-driven count in {window} s is {peak} ({w.why})")
    elif high > w.n:
        window = num(part.scale_down_stabilization_s)
        w.set(high, Rule.Stabilization, f"highest recommendation in {window} s is {high} ({w.why})")
    if w.n >= cur:
        return
    # 7. tolerance
    if S.within_tolerance(cur, w.n, cfg):
        w.set(cur, Rule.Tolerance, f"{w.why}; within {cfg.tolerance:.0%} of {cur}")
        return
    # 8. cooldown
    left = S.cooling_down(prev.last_change_at, now, up=False, cfg=cfg)
    if left > 0:
        w.set(cur, Rule.Cooldown, f"{w.why}; cooldown {num(left)} s left")
        return
    # 9. step limit
    floor = S.max_down(cur, cfg)
    if w.n < floor:
        w.set(floor, Rule.MaxStep, f"{w.why}; at most {cur - floor} fewer per cycle")


def _damp_up(
    w: _Wanted, cur: int, prev: PartState, panic: bool, wake: bool, now: float, cfg: PolicyConfig
) -> None:
    urgent = panic or wake
    if not urgent and S.within_tolerance(cur, w.n, cfg):
        w.set(cur, Rule.Tolerance, f"{w.why}; within {cfg.tolerance:.0%} of {cur}")
        return
    left = S.cooling_down(prev.last_change_at, now, up=True, cfg=cfg)
    if not urgent and left > 0:
        w.set(cur, Rule.Cooldown, f"{w.why}; cooldown {num(left)} s left")
        return
    ceiling = S.max_up(cur, cfg)
    if not panic and w.n > ceiling:
        w.set(ceiling, Rule.MaxStep, f"{w.why}; at most {ceiling - cur} more per cycle")
