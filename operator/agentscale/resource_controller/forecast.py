"""Predictive and feed-forward arrival rates.

Holt's linear trend (double exponential smoothing) forecasts each part's arrival rate a little ahead; its
state is a small frozen value the caller carries from cycle to cycle, so every function here is pure.
Feed-forward then pushes rates down the DAG: a step's planned rate is at least what its inputs will send it
(input rate x the input's fan-out; a join takes the max of its inputs), and a model's is at least the sum of
the steps that call it (one inference per message), so downstream parts scale before their queues build.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import NamedTuple

from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.snapshot import Part, WorkflowSnapshot, num


class HoltState(NamedTuple):
    """One part's forecast state (a named tuple, like every small value built per part per cycle: the
    cheapest frozen value to build)."""

    level: float
    trend: float  # per second
    at: float  # time of the last observation
    observations: int = 1


def holt_update(state: HoltState | None, value: float, now: float, alpha: float, beta: float) -> HoltState:
    """Fold one observation in. The first sets the level; the second sets the trend to the observed slope
    (so a linear ramp is followed exactly from then on); later ones smooth with alpha and beta. Observation
    intervals may vary: the trend is per second."""
    if state is None:
        return HoltState(value, 0.0, now)
    dt = now - state.at
    if dt <= 0:
        return state
    if state.observations == 1:
        return HoltState(value, (value - state.level) / dt, now, 2)
    predicted = state.level + state.trend * dt
    level = alpha * value + (1.0 - alpha) * predicted
    trend = beta * (level - state.level) / dt + (1.0 - beta) * state.trend
    return HoltState(level, trend, now, state.observations + 1)


def holt_forecast(state: HoltState, horizon_s: float) -> float:
    """The rate ``horizon_s`` after the last observation; never negative."""
    return max(0.0, state.level + state.trend * horizon_s)


def horizon_s(part: Part, cfg: PolicyConfig) -> float:
    """How far ahead to look: the part's cold-start delay (what a replica ordered now needs to be ready),
    clamped to [forecast_horizon_min_s, forecast_horizon_max_s]."""
    return min(max(part.cold_start_s, cfg.forecast_horizon_min_s), cfg.forecast_horizon_max_s)


class PlannedRate(NamedTuple):
    """The arrival rate a part is sized for, and where it came from (for the reason line)."""

    rate: float | None
    source: str  # "measured", "forecast +12s", "from a x 2", or "" when unknown

    def describe(self) -> str:
        if self.rate is None:
            return "arrivals unknown"
        return f"arrivals {num(self.rate)}/s" + (f" ({self.source})" if self.source != "measured" else "")


# A candidate rate and where it came from, as (rate, kind, feeding step, number): the source line is
# formatted only for the winner (:func:`_source`), since a fleet's cycle weighs thousands of candidates.
_Candidate = tuple[float, str, str, float]


def _source(kind: str, step: str, x: float) -> str:
    if kind == "forecast":  # x: the horizon
        return f"forecast +{num(x)}s"
    if kind == "fed":  # x: the feeding step's fan-out
        return f"from {step}" + (f" x {num(x)}" if x != 1.0 else "")
    return kind  # "measured", "from its steps"


def _best(candidates: list[_Candidate]) -> PlannedRate:
    if not candidates:
        return PlannedRate(None, "")
    rate, kind, step, x = max(candidates, key=itemgetter(0))
    return PlannedRate(rate, _source(kind, step, x))


def planned_rates(
    snap: WorkflowSnapshot, holts: Mapping[str, HoltState | None], cfg: PolicyConfig
) -> tuple[dict[str, PlannedRate], dict[str, HoltState | None]]:
    """Per part key, the rate to size for: the highest of the measured rate, its forecast (only ever
    raises) and what the DAG feeds it. Returns the updated Holt states too (unchanged where the rate is
    unknown this cycle)."""
    new_holts: dict[str, HoltState | None] = {}
    own: dict[str, list[_Candidate]] = {}
    for p in snap.parts:
        holt = holts.get(p.key)
        measured = p.signals.arrival_rps
        candidates: list[_Candidate] = []
        if measured is not None:
            holt = holt_update(holt, measured, snap.now, cfg.holt_alpha, cfg.holt_beta)
            candidates.append((measured, "measured", "", 0.0))
            if holt.observations >= 2:
                h = horizon_s(p, cfg)
                candidates.append((holt_forecast(holt, h), "forecast", "", h))
        new_holts[p.key] = holt
        own[p.key] = candidates

    out: dict[str, PlannedRate] = {}
    by_name = {p.name: p for p in snap.steps}
    for name in snap.step_order():
        key = by_name[name].key
        candidates = own[key]
        for f in snap.step_inputs[name]:  # a join takes the max of its inputs: max over all candidates
            feeder = by_name[f]
            fed = out[feeder.key].rate
            if fed is not None:
                fan = feeder.signals.fan_out
                fan = 1.0 if fan is None or fan < 0 else fan
                candidates.append((fed * fan, "fed", f, fan))
        out[key] = _best(candidates)
    for m in snap.models:
        candidates = own[m.key]
        callers = [out[s.key].rate for s in snap.steps if s.model == m.name]
        known = [r for r in callers if r is not None]
        if known:
            candidates.append((sum(known), "from its steps", "", 0.0))
        out[m.key] = _best(candidates)
    return out, new_holts
