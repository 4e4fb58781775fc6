"""Priority lanes: every step has one stream per lane; a run's lane follows from its priority."""

from __future__ import annotations

LANES = ("high", "normal", "low")  # every step has one stream per lane; workers drain them in this order


def lane_of(priority: int, workflow_priority: int) -> str:
    """The lane of a run: above the workflow's own priority is ``high``, below it ``low``."""
    if priority > workflow_priority:
        return "high"
    if priority < workflow_priority:
        return "low"
    return "normal"
