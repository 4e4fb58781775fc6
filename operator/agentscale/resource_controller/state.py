"""What the policy remembers between cycles, as values: the caller passes the last state in and keeps the one
that comes back. Losing it (a new leader) is safe: a part seen for the first time cannot scale down for one
stabilization window."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentscale.resource_controller.forecast import HoltState


@dataclass(frozen=True)
class PartState:
    history: tuple[tuple[float, int], ...] = ()
    """(time, recommendation) over the scale-down stabilization window, oldest first."""
    drain_peaks: tuple[tuple[float, int], ...] = ()
    """(time, count) a backlog raised, over ``drain_stabilization_s``, oldest first."""
    last_change_at: float | None = None
    """When the policy last changed this part's replicas (cooldowns)."""
    panic_triggered_at: float | None = None
    """The last time the short-window rate crossed the panic threshold."""
    idle_since: float | None = None
    """Since when the part has seen no arrivals and no lag (scale to zero)."""
    holt: HoltState | None = None
    """The arrival-rate forecast."""


WorkflowState = Mapping[str, PartState]
"""Part key (``step/<name>``, ``model/<name>``) -> its state."""
