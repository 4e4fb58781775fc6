"""Drift detection: hand edits of fields we render count; defaults, status and others' fields do not."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from agentscale.api.models import AgentWorkflow
from agentscale.api.models import parse_quantity as quantity
from agentscale.api.validation import parse_spec
from agentscale.drift import drifted_fields, live_digest
from agentscale.render import child_key, render_workflow
from conftest import minimal_spec


def rendered(**overrides: Any) -> dict[tuple[str, str], dict[str, Any]]:
    wf = AgentWorkflow(metadata={"name": "wf", "namespace": "ns"}, spec=parse_spec(minimal_spec(**overrides)))
    return {child_key(o): o for o in render_workflow(wf, "uid")}


def as_live(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server would hand back: defaults filled in, bookkeeping and status added."""
    live = copy.deepcopy(obj)
    live["metadata"].update({"resourceVersion": "42", "uid": "x", "generation": 3, "managedFields": [{}]})
    if live["kind"] == "Service":
        live["spec"] = {k: v for k, v in live["spec"].items() if v is not False}  # omitempty booleans
    if live["kind"] == "Deployment":
        spec = live["spec"]
        spec["progressDeadlineSeconds"] = 600
        pod = spec["template"]["spec"]
        pod["dnsPolicy"] = "ClusterFirst"
        c = pod["containers"][0]
        c["terminationMessagePath"] = "/dev/termination-log"
        c.setdefault("env", []).append({"name": "ADDED_ELSEWHERE", "value": "1"})  # another manager's
        for e in c.get("env", []):
            if e.get("value") == "":
                del e["value"]  # omitempty: the API server drops empty strings
        req = c["resources"].setdefault("requests", {})
        if req.get("cpu") == "100m":
            req["cpu"] = "0.1"  # the same quantity, written differently
        live["status"] = {"replicas": 1, "readyReplicas": 1}
    return live


def test_quantities_compare_by_value() -> None:
    assert quantity("500m") == quantity("0.5") == Decimal("0.5")
    assert quantity("1Gi") == quantity(1073741824)
    assert quantity("1e3") == quantity("1k")
    assert quantity("banana") is None and quantity(True) is None and quantity("500m") != quantity("5")


def test_untouched_children_have_no_drift() -> None:
    for obj in rendered().values():
        assert drifted_fields(obj, as_live(obj)) == [], obj["kind"]


EDITS = [
    (
        "kubectl set image",
        ("Deployment", "wf-a"),
        lambda o: o["spec"]["template"]["spec"]["containers"][0].update(image="evil:1"),
        "spec.template.spec.containers[worker].image",
    ),
    (
        "kubectl scale (fixed mode)",
        ("Deployment", "wf-b"),
        lambda o: o["spec"].update(replicas=7),
        "spec.replicas",
    ),
    (
        "removed label",
        ("Deployment", "wf-b"),
        lambda o: o["metadata"]["labels"].pop("app.kubernetes.io/part-of"),
        "metadata.labels.app.kubernetes.io/part-of",
    ),
    (
        "edited config.pbtxt",
        ("ConfigMap", "wf-m-config"),
        lambda o: o["data"].update({"config.pbtxt": "max_batch_size: 1\n"}),
        "data.config.pbtxt",
    ),
    (
        "removed owner reference",
        ("Service", "wf-m"),
        lambda o: o["metadata"].pop("ownerReferences"),
        "metadata.ownerReferences",
    ),
    (
        "removed container port",
        ("Deployment", "wf-a"),
        lambda o: o["spec"]["template"]["spec"]["containers"][0].pop("ports"),
        "spec.template.spec.containers[worker].ports",
    ),
]


@pytest.mark.parametrize(("case", "ck", "edit", "path"), EDITS, ids=[e[0] for e in EDITS])
def test_hand_edits_are_drift(case: str, ck: tuple[str, str], edit: Any, path: str) -> None:
    children = rendered()
    assert ck in children, sorted(children)
    live = as_live(children[ck])
    edit(live)
    assert path in drifted_fields(children[ck], live)


def test_replicas_owned_by_an_autoscaler_are_not_drift() -> None:
    children = rendered(steps=[{"name": "a", "scaling": {"mode": "hpa", "minReplicas": 1, "maxReplicas": 5}}])
    dep = children[("Deployment", "wf-a")]
    assert "replicas" not in dep["spec"]
    live = as_live(dep)
    live["spec"]["replicas"] = 5  # the HPA's
    assert drifted_fields(dep, live) == []


def test_status_only_updates_keep_the_digest() -> None:
    dep = as_live(rendered()[("Deployment", "wf-a")])
    before = live_digest(dep)
    dep["status"] = {"replicas": 3, "readyReplicas": 2}
    dep["metadata"]["resourceVersion"] = "43"
    assert live_digest(dep) == before
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "x"
    assert live_digest(dep) != before


def test_generation_stands_in_for_the_spec_where_the_api_server_bumps_it() -> None:
    dep = as_live(rendered()[("Deployment", "wf-a")])
    before = live_digest(dep, generation_tracks_spec=True)
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "x"  # the API server would bump generation
    assert live_digest(dep, generation_tracks_spec=True) == before
    dep["metadata"]["generation"] += 1
    assert live_digest(dep, generation_tracks_spec=True) != before
    dep["metadata"]["labels"]["extra"] = "1"  # metadata edits do not bump generation: still seen
    after = live_digest(dep, generation_tracks_spec=True)
    del dep["metadata"]["labels"]["extra"]
    assert live_digest(dep, generation_tracks_spec=True) != after
