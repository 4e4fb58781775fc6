"""Placement in rendered pods: every pod kind gets the workflow's and its own, merged with the GPU's."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import yaml
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import parse_spec
from agentscale.render import render_workflow
from conftest import EXAMPLES, minimal_spec

UID = "00000000-0000-0000-0000-000000000001"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
DEDICATED = {"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"}
EVICT = {
    "key": "node.kubernetes.io/unreachable",
    "operator": "Exists",
    "effect": "NoExecute",
    "tolerationSeconds": 30,
}
WORKFLOW = {"nodeSelector": {"agentscale.io/pool": "agents", "zone": "z1"}, "tolerations": [DEDICATED]}


def render(spec: dict[str, Any], name: str = "wf") -> list[dict[str, Any]]:
    wf = AgentWorkflow(metadata={"name": name, "namespace": "ns"}, spec=parse_spec(spec))
    return render_workflow(wf, UID)


def pods(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"}


def spec_with(**parts: dict[str, Any]) -> dict[str, Any]:
    """minimal_spec (steps a, b; model m; the gateway) with the workflow's placement and ``parts``' own."""
    spec = minimal_spec(placement=WORKFLOW)
    for step in spec["steps"]:
        if step["name"] in parts:
            step["placement"] = parts[step["name"]]
    if "m" in parts:
        spec["models"][0]["placement"] = parts["m"]
    if "gateway" in parts:
        spec["gateway"] = {"placement": parts["gateway"]}
    return spec


def test_every_pod_kind_gets_the_workflows_placement() -> None:
    specs = pods(render(spec_with()))
    assert set(specs) == {"wf-a", "wf-b", "wf-m", "wf-gateway"}
    for name, pod in specs.items():
        assert pod["nodeSelector"] == WORKFLOW["nodeSelector"], name
        assert pod["tolerations"] == [DEDICATED], name


def test_each_part_merges_its_own_over_the_workflows() -> None:
    own = {"nodeSelector": {"zone": "z2", "disk": "ssd"}, "tolerations": [EVICT, DEDICATED]}
    merged_selector = {"agentscale.io/pool": "agents", "zone": "z2", "disk": "ssd"}
    for part, deployment in (("a", "wf-a"), ("m", "wf-m"), ("gateway", "wf-gateway")):
        specs = pods(render(spec_with(**{part: own})))
        assert specs[deployment]["nodeSelector"] == merged_selector, part
        assert specs[deployment]["tolerations"] == [DEDICATED, EVICT], part
        others = [n for n in specs if n != deployment]
        for n in others:  # the other parts keep the workflow's alone
            assert specs[n]["nodeSelector"] == WORKFLOW["nodeSelector"], (part, n)


def test_a_part_placement_alone_applies_to_that_part_only() -> None:
    spec = minimal_spec()
    spec["steps"][0]["placement"] = {"nodeSelector": {"kubernetes.io/hostname": "cpu-0"}}
    specs = pods(render(spec))
    assert specs["wf-a"]["nodeSelector"] == {"kubernetes.io/hostname": "cpu-0"}
    assert "tolerations" not in specs["wf-a"]
    for n in ("wf-b", "wf-m", "wf-gateway"):
        assert "nodeSelector" not in specs[n] and "tolerations" not in specs[n]


def test_gpu_pods_keep_the_gpu_selection_merged_with_the_users() -> None:
    spec = spec_with(m={"tolerations": [GPU_TAINT, EVICT]})
    spec["models"][0]["gpu"] = {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}
    spec["steps"][1]["gpu"] = {"migProfile": "1g.10gb"}
    specs = pods(render(spec))
    model = specs["wf-m"]
    assert model["nodeSelector"] == {
        **WORKFLOW["nodeSelector"],
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    # The GPU toleration first, then the workflow's and the part's; the user's copy of the GPU one dropped.
    assert model["tolerations"] == [GPU_TAINT, DEDICATED, EVICT]
    step_b = specs["wf-b"]  # a GPU without a product: no product label, the GPU toleration still there
    assert step_b["nodeSelector"] == WORKFLOW["nodeSelector"]
    assert step_b["tolerations"] == [GPU_TAINT, DEDICATED]


def test_the_same_gpu_product_in_the_selector_is_kept_once() -> None:
    product = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    spec = minimal_spec(placement={"nodeSelector": product})
    spec["models"][0]["gpu"] = {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}
    assert pods(render(spec))["wf-m"]["nodeSelector"] == product


def test_empty_placement_renders_exactly_what_no_placement_renders() -> None:
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        plain = copy.deepcopy(doc["spec"])
        empty = copy.deepcopy(doc["spec"])
        empty["placement"] = {}
        for part in empty["steps"] + empty.get("models", []):
            part["placement"] = {"nodeSelector": {}, "tolerations": []}
        empty.setdefault("gateway", {})["placement"] = {}
        name = doc["metadata"]["name"]
        assert render(empty, name) == render(plain, name), path.name


def test_a_placed_example_is_valid_for_kubernetes_1_34() -> None:
    path = next(p for p in EXAMPLES if p.stem == "recommendation")
    doc = yaml.safe_load(path.read_text())
    spec = doc["spec"]
    spec["placement"] = {
        "nodeSelector": {"agentscale.io/pool": "gpu-h100"},
        "tolerations": [DEDICATED, EVICT],
    }
    for part in spec["steps"] + spec.get("models", []):
        part["placement"] = {
            "nodeSelector": {"kubernetes.io/hostname": "gpu-h100-0"},
            "tolerations": [GPU_TAINT],
        }
    objs = render(spec, doc["metadata"]["name"])
    specs = pods(objs)
    assert specs and all(
        p["nodeSelector"]["kubernetes.io/hostname"] == "gpu-h100-0"
        for n, p in specs.items()
        if not n.endswith("-gateway")
    )
    assert all(DEDICATED in p["tolerations"] and EVICT in p["tolerations"] for p in specs.values())
    for obj in objs:
        kubernetes_validate.validate(obj, "1.34", strict=True)
