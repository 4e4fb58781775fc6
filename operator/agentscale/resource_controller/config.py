"""Every knob of the resource controller's policy, with its default, in one place.

Targets the API already carries (``targetQueueLagPerReplica``, ``targetQueueTimeMs``,
``scaleDownStabilizationSeconds``, ``minReplicas``/``maxReplicas``) come per part from the snapshot, not from
here. docs/tuning.md ("Resource controller policies") explains each knob.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

STARTUP_ENV = "AGENTSCALE_RC_POD_STARTUP_SECONDS"


@dataclass(frozen=True)
class PolicyConfig:
    # -- sizing -----------------------------------------------------------------------------------------
    target_utilization: float = 0.85
    """Little's law sizing keeps each replica this busy (Knative's default target is 70%; 0.85 measured:
    docs/benchmarks.md, the diurnal trace at 100% attainment for 1.19x the oracle instead of 1.40x)."""
    latency_quantile: float = 0.95
    """The quantile the SLO names (p95)."""
    correction_min: float = 0.5
    correction_max: float = 2.0
    """SLO mode: observed / predicted p95 at the current size, clamped to [min, max], scales the model."""
    model_budget_share: float = 0.5
    """SLO mode, models: the share of a calling step's budget given to the model when either latency is
    unmeasured (otherwise the measured ratio model p95 / step p95)."""
    budget_weight_floor: float = 0.05
    """A step's weight in the budget split is at least this fraction of the heaviest step's."""
    startup_s: float = 30.0
    """Seconds from a scale-up to a ready pod (``AGENTSCALE_RC_POD_STARTUP_SECONDS``): the loop gives every
    part this ``cold_start_s``, which sets the forecast horizon and the drain window."""
    drain_startup_share: float = 0.25
    """A backlog is drained over max(latency budget, this x the part's start-up delay): replicas ordered now
    serve only after the start-up, so draining faster than that buys pods that arrive after the backlog."""

    # -- bursts -----------------------------------------------------------------------------------------
    panic_threshold: float = 2.0
    """Panic when the short-window rate needs this many times the current replicas (Knative: 200%)."""
    panic_stable_window_s: float = 60.0
    """Leave panic once the threshold has not been crossed for this long (Knative's stable window)."""

    # -- forecast and feed-forward ----------------------------------------------------------------------
    holt_alpha: float = 0.5
    """Holt's level smoothing (0..1; higher follows the rate faster)."""
    holt_beta: float = 0.3
    """Holt's trend smoothing (0..1)."""
    forecast_horizon_min_s: float = 10.0
    forecast_horizon_max_s: float = 60.0
    """Forecast the rate this far ahead: the part's cold-start delay, clamped to [min, max]."""

    # -- scale to zero ------------------------------------------------------------------------------------
    idle_window_s: float = 300.0
    """A part with minReplicas 0 goes to zero after this long with no arrivals and no lag."""

    # -- never flap -------------------------------------------------------------------------------------
    tolerance: float = 0.1
    """Hold when the recommendation is within this fraction of the current replicas (the HPA's 10%)."""
    cooldown_up_s: float = 15.0
    """No scale-up this soon after a change (panic and wake skip it)."""
    cooldown_down_s: float = 60.0
    """No scale-down this soon after a change."""
    drain_stabilization_s: float = 60.0
    """A count a backlog raised holds scale-down this long (at most ``scaleDownStabilizationSeconds``); the
    window itself remembers only what the rate alone needs, so a drain's peak is not kept for the whole
    window, yet a backlog that keeps coming back within this time does not flap."""
    max_up_factor: float = 2.0
    max_up_pods: int = 4
    """At most max(max_up_pods, current x (max_up_factor - 1)) replicas added per cycle (panic skips it)."""
    max_down_fraction: float = 0.5
    max_down_pods: int = 1
    """At most max(max_down_pods, current x max_down_fraction) replicas removed per cycle."""

    # -- right-sizing (rightsize.py; each part's percentile, margin, window and floors are in its spec) ------
    rightsize_interval_s: float = 60.0
    """Seconds between right-sizing rounds (within the loop's cycle: a round runs in the first cycle after
    this much time)."""
    rightsize_threshold: float = 0.1
    """A part's requests change only when the recommendation moves beyond this fraction of those in force."""
    rightsize_min_coverage: float = 0.5
    """A pod counts once it has series for this fraction of the window."""

    def __post_init__(self) -> None:
        checks = {
            "target_utilization": 0 < self.target_utilization <= 1,
            "latency_quantile": 0 < self.latency_quantile < 1,
            "correction bounds": 0 < self.correction_min <= 1 <= self.correction_max,
            "model_budget_share": 0 < self.model_budget_share <= 1,
            "budget_weight_floor": 0 <= self.budget_weight_floor <= 1,
            "startup_s": self.startup_s >= 0,
            "drain_startup_share": self.drain_startup_share >= 0,
            "panic_threshold": self.panic_threshold > 1,
            "holt smoothing": 0 < self.holt_alpha <= 1 and 0 < self.holt_beta <= 1,
            "forecast horizon": 0 <= self.forecast_horizon_min_s <= self.forecast_horizon_max_s,
            "tolerance": 0 <= self.tolerance < 1,
            "rightsize_interval_s": self.rightsize_interval_s > 0,
            "rightsize_threshold": 0 <= self.rightsize_threshold < 1,
            "rightsize_min_coverage": 0 < self.rightsize_min_coverage <= 1,
            "max_up": self.max_up_factor >= 1 and self.max_up_pods >= 1,
            "max_down": 0 <= self.max_down_fraction <= 1 and self.max_down_pods >= 1,
            "windows": min(self.panic_stable_window_s, self.idle_window_s) >= 0
            and min(self.cooldown_up_s, self.cooldown_down_s, self.drain_stabilization_s) >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"PolicyConfig: out of range: {', '.join(bad)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PolicyConfig:
        """The defaults, each overridden by its environment variable when set (:func:`env_name`: the knob in
        capitals after ``AGENTSCALE_RC_``, ``_s`` spelt ``_SECONDS``; ``startup_s`` is
        ``AGENTSCALE_RC_POD_STARTUP_SECONDS``). A value that is not a number, or out of range, is an error
        naming the variable and its default."""
        values: dict[str, float | int] = {}
        for f in fields(cls):
            name = env_name(f.name)
            raw = env.get(name, "").strip()
            if not raw:
                continue
            default = getattr(cls, f.name)
            try:
                value: float | int = int(raw) if isinstance(default, int) else float(raw)
            except ValueError:
                value = float("nan")
            if not (value == value and abs(value) != float("inf") and value >= 0):  # NaN, inf, negative
                unit = " in seconds," if f.name.endswith("_s") else " to"
                whole = " (a whole number)" if isinstance(default, int) else ""
                raise ValueError(
                    f"{name}={raw!r}: set {f.name}{unit} a number >= 0{whole} (unset: {default:g})"
                )
            values[f.name] = value
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as e:
            names = ", ".join(f"{env_name(k)}={env[env_name(k)]}" for k in values)
            raise ValueError(f"{e} (from {names}; see docs/tuning.md for each knob's range)") from None


def env_name(knob: str) -> str:
    """The environment variable of one PolicyConfig knob."""
    if knob == "startup_s":
        return STARTUP_ENV
    return "AGENTSCALE_RC_" + (knob[:-2] + "_seconds" if knob.endswith("_s") else knob).upper()
