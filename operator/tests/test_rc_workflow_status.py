"""The workflow controller's status write keeps the resource controller's MetricsUnavailable condition: a
JSON merge patch replaces ``conditions`` whole, so ``refresh`` must pass the live status (``Observed.live``)
or the entry the resource controller wrote would be dropped by the next workflow-controller write."""

from __future__ import annotations

from typing import Any

import pytest
from agentscale.status import METRICS_UNAVAILABLE, metrics_condition
from agentscale.workflow_controller import WorkflowController, WorkflowState
from conftest import load_workflow, minimal_spec

KEY = ("ns", "wf")


class Store(dict):  # type: ignore[type-arg]
    """Stands in for a kopf index in this unit test: key -> list of values."""


class PatchRecorder:
    """Stands in for KubeClient in this unit test only: records status patches, Events go nowhere."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def close(self) -> None:
        return None

    async def post_event(self, *_: Any) -> None:
        return None

    async def patch_status(self, _v: str, _k: str, _ns: str, _name: str, status: Any) -> None:
        self.patches.append(status)


def controller(live_status: dict[str, Any]) -> tuple[WorkflowController, PatchRecorder]:
    client = PatchRecorder()
    op = WorkflowController(client, reconcile_workers=0)  # type: ignore[arg-type]
    record = {"spec": minimal_spec(), "generation": 3, "uid": "u", "deleting": False, "status": live_status}
    op.cache.bind({"agentworkflows_idx": Store({KEY: [record]})})
    wf = load_workflow({"metadata": {"name": "wf", "namespace": "ns"}, "spec": minimal_spec()})
    op.state[KEY] = WorkflowState(3, wf)
    return op, client


def conditions(patch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in patch["conditions"]}


@pytest.mark.parametrize(
    ("case", "live_entry"),
    [
        ("unavailable", metrics_condition({}, True, "Unreachable", "connection refused", 3)),
        ("recovered", metrics_condition({}, False, "SignalsRead", "", 3)),
        ("absent", None),
    ],
)
async def test_refresh_writes_the_resource_controllers_condition_as_the_live_status_has_it(
    case: str, live_entry: Any
) -> None:
    mine = None if live_entry is None else live_entry.model_dump(mode="json")
    live = {"conditions": [mine] if mine else []}
    op, client = controller(live)
    await op.refresh(KEY)
    assert client.patches, case
    written = conditions(client.patches[-1])
    if mine is None:
        assert METRICS_UNAVAILABLE not in written  # nothing invented
    else:
        assert written[METRICS_UNAVAILABLE] == mine  # as written, transition time and all
    assert written["Ready"]["status"] in ("True", "False")  # the workflow controller's own still there
