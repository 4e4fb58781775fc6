from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import parse_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "workloads" / "examples").glob("*.yaml"))


def load_workflow(doc: dict[str, Any]) -> AgentWorkflow:
    meta = doc["metadata"]
    return AgentWorkflow(
        metadata={"name": meta["name"], "namespace": meta.get("namespace", "default")},
        spec=parse_spec(doc["spec"]),
    )


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "queue": {"redisUrl": "redis://redis:6379/0"},
        "models": [{"name": "m", "modelRepository": "/models"}],
        "steps": [
            {"name": "a", "model": "m", "next": ["b"]},
            {"name": "b"},
        ],
    }
    spec.update(overrides)
    return spec


@pytest.fixture(params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
def example(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    path: Path = request.param
    return path, yaml.safe_load(path.read_text())
