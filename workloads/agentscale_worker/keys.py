"""Redis key and stream names: the one place they are spelled. Documented in docs/dataplane.md.

All keys of a workflow share the prefix ``as:{<namespace>/<workflow>}:`` (the braces make it one hash slot,
so the Lua scripts stay valid on a Redis Cluster too)."""

from __future__ import annotations

GROUP = "workers"  # the consumer group on every step stream


def prefix(namespace: str, workflow: str) -> str:
    return f"as:{{{namespace}/{workflow}}}:"


def step_stream(p: str, step: str, lane: str = "normal") -> str:
    """A step's stream for one priority lane; the ``normal`` lane keeps the plain name."""
    return f"{p}step:{step}" if lane == "normal" else f"{p}step:{step}:{lane}"


def step_streams(p: str, step: str, lanes: tuple[str, ...]) -> list[str]:
    """A step's streams in the order workers consume them (highest lane first)."""
    return [step_stream(p, step, lane) for lane in lanes]


def dead_letter(p: str, step: str) -> str:
    return f"{p}dlq:{step}"


def results(p: str) -> str:
    return f"{p}results"


def run(p: str, run_id: str) -> str:
    return f"{p}run:{run_id}"


def join(p: str, run_id: str, step: str) -> str:
    return f"{p}join:{run_id}:{step}"


def done(p: str, run_id: str, step: str) -> str:
    return f"{p}done:{run_id}:{step}"


def inflight(p: str) -> str:
    return f"{p}inflight"
