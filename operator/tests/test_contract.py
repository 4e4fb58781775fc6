"""The operator's rendered pod env is exactly what the worker runtime reads (one contract, two packages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentscale.render import render_workflow
from agentscale_worker import config as worker_config
from conftest import load_workflow


def _env(container: dict[str, Any]) -> dict[str, str]:
    out = {}
    for e in container["env"]:
        # valueFrom is resolved by the kubelet; give it a stand-in of the right shape.
        out[e["name"]] = e.get("value", "redis://from-secret:6379/0" if "REDIS" in e["name"] else "ns")
    return out


def test_rendered_env_parses_in_the_worker(example: tuple[Path, dict[str, Any]]) -> None:
    _, doc = example
    wf = load_workflow(doc)
    steps = {s.name: s for s in wf.spec.steps}
    deployments = [o for o in render_workflow(wf) if o["kind"] == "Deployment"]
    seen = set()
    for dep in deployments:
        container = dep["spec"]["template"]["spec"]["containers"][0]
        if container["name"] not in ("worker", "gateway"):
            continue
        settings = worker_config.Settings.from_env(_env(container))
        assert set(settings.graph.steps) == set(steps)
        assert settings.priority == worker_config.PRIORITY_LEVELS[wf.spec.priority.value]
        assert settings.graph.p95_latency_ms == wf.spec.slo.p95LatencyMs
        if container["name"] == "worker":
            step = steps[settings.step]
            seen.add(step.name)
            assert settings.model == (step.model or "")
            assert settings.concurrency == step.concurrency
            assert settings.batch_max_size == step.batch.maxSize
            assert settings.load_balancing == step.loadBalancing.value
            assert settings.max_deliveries == step.maxDeliveries
            assert settings.graph.next_of(step.name) == tuple(step.next)
    assert seen == set(steps)
