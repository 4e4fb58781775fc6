"""Placement: the merge of the workflow's and a part's placement, and what validation refuses."""

from __future__ import annotations

from typing import Any

import pytest
from agentscale.api.placement import Placement, Toleration, merge
from agentscale.api.validation import InvalidSpec, parse_spec
from conftest import minimal_spec

GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
DEDICATED = {"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"}
EVICT = {
    "key": "node.kubernetes.io/unreachable",
    "operator": "Exists",
    "effect": "NoExecute",
    "tolerationSeconds": 30,
}


def p(selector: dict[str, str] | None = None, *tolerations: dict[str, Any]) -> Placement:
    return Placement(nodeSelector=selector or {}, tolerations=[Toleration(**t) for t in tolerations])


# ------------------------------------------------------------------------------------------------- merge


@pytest.mark.parametrize(
    ("workflow", "part", "selector", "tolerations"),
    [
        pytest.param(None, None, {}, [], id="neither"),
        pytest.param(p({"pool": "a"}, DEDICATED), None, {"pool": "a"}, [DEDICATED], id="workflow-only"),
        pytest.param(None, p({"pool": "b"}, EVICT), {"pool": "b"}, [EVICT], id="part-only"),
        pytest.param(p({"pool": "a"}), p({"pool": "b"}), {"pool": "b"}, [], id="part-key-wins"),
        pytest.param(
            p({"pool": "a", "zone": "z1"}),
            p({"pool": "b", "disk": "ssd"}),
            {"pool": "b", "zone": "z1", "disk": "ssd"},
            [],
            id="keys-merge",
        ),
        pytest.param(p(None, DEDICATED), p(None, EVICT), {}, [DEDICATED, EVICT], id="tolerations-union"),
        pytest.param(p(None, DEDICATED), p(None, DEDICATED, EVICT), {}, [DEDICATED, EVICT], id="dedupe"),
        pytest.param(
            p(None, {"key": "dedicated", "value": "agents", "effect": "NoSchedule"}),
            p(None, DEDICATED),
            {},
            [DEDICATED],
            id="dedupe-default-operator",
        ),
        pytest.param(
            p(None, DEDICATED),
            p(None, {**DEDICATED, "effect": "NoExecute"}),
            {},
            [DEDICATED, {**DEDICATED, "effect": "NoExecute"}],
            id="different-effect-kept",
        ),
        pytest.param(p({}), p({}), {}, [], id="empty-both"),
    ],
)
def test_merge(
    workflow: Placement | None,
    part: Placement | None,
    selector: dict[str, str],
    tolerations: list[dict[str, Any]],
) -> None:
    merged = merge(workflow, part)
    assert merged.nodeSelector == selector
    assert [t.to_dict() for t in merged.tolerations] == tolerations


def test_merge_leaves_its_inputs_alone() -> None:
    workflow, part = p({"pool": "a"}, DEDICATED), p({"pool": "b"}, EVICT)
    merge(workflow, part)
    assert workflow.nodeSelector == {"pool": "a"} and len(workflow.tolerations) == 1
    assert part.nodeSelector == {"pool": "b"} and len(part.tolerations) == 1


# ------------------------------------------------------------------------------------------------- validation


def problems(**overrides: Any) -> list[str]:
    with pytest.raises(InvalidSpec) as exc:
        parse_spec(minimal_spec(**overrides))
    return exc.value.problems


@pytest.mark.parametrize(
    ("placement", "where", "says"),
    [
        ({"nodeSelector": {"bad key": "x"}}, "spec.placement.nodeSelector", "must be a label key"),
        ({"nodeSelector": {"-a": "x"}}, "spec.placement.nodeSelector", "must be a label key"),
        ({"nodeSelector": {"Upper.Case/k": "x"}}, "spec.placement.nodeSelector", "must be a label key"),
        ({"nodeSelector": {"a" * 64: "x"}}, "spec.placement.nodeSelector", "1-63 characters"),
        ({"nodeSelector": {"ex.com/" + "a" * 64: "x"}}, "spec.placement.nodeSelector", "1-63 characters"),
        ({"nodeSelector": {"k": "has space"}}, "spec.placement.nodeSelector", "e.g. 'has-space'"),
        ({"nodeSelector": {"k": "v" * 64}}, "spec.placement.nodeSelector", "at most 63"),
        ({"nodeSelector": {f"k{i}": "v" for i in range(33)}}, "spec.placement.nodeSelector", "at most 32"),
        (
            {"tolerations": [{"operator": "Equal", "value": "v"}]},
            "spec.placement.tolerations[0]",
            "operator Exists",
        ),
        (
            {"tolerations": [{"key": "a", "operator": "Exists", "value": "v"}]},
            "tolerations[0]",
            "takes no value",
        ),
        ({"tolerations": [{"key": "a", "tolerationSeconds": 5}]}, "tolerations[0]", "NoExecute only"),
        ({"tolerations": [{"key": "a", "operator": "In"}]}, "tolerations[0].operator", "'Exists' or 'Equal'"),
        ({"tolerations": [{"key": "a", "effect": "NoRun"}]}, "tolerations[0].effect", "NoSchedule"),
        (
            {"tolerations": [{"key": "a", "effect": "NoExecute", "tolerationSeconds": -1}]},
            "tolerationSeconds",
            "0",
        ),
        ({"tolerations": [{"key": "a", "value": "bad value"}]}, "tolerations[0].value", "label value"),
        ({"tolerations": [{"key": "a", "valeu": "x"}]}, "tolerations[0].valeu", "did you mean `value`"),
        ({"nodeSelectors": {}}, "spec.placement.nodeSelectors", "did you mean `nodeSelector`"),
    ],
)
def test_bad_placement_names_the_field_and_the_fix(placement: dict[str, Any], where: str, says: str) -> None:
    found = problems(placement=placement)
    assert any(where in m and says in m for m in found), found


def test_part_placement_is_validated_where_it_is() -> None:
    spec = minimal_spec()
    spec["steps"][1]["placement"] = {"nodeSelector": {"k": "bad value"}}
    spec["models"][0]["placement"] = {"tolerations": [{"value": "x"}]}
    spec["gateway"] = {"placement": {"nodeSelector": {"/k": "v"}}}
    with pytest.raises(InvalidSpec) as exc:
        parse_spec(spec)
    text = "; ".join(exc.value.problems)
    assert "spec.steps[1].placement.nodeSelector" in text
    assert "spec.models[0].placement.tolerations[0]" in text
    assert "spec.gateway.placement.nodeSelector" in text


def test_good_placement_parses() -> None:
    spec = parse_spec(
        minimal_spec(
            placement={
                "nodeSelector": {
                    "agentscale.io/pool": "gpu-h100",
                    "kubernetes.io/hostname": "gpu-h100-0",
                    "e": "",
                },
                "tolerations": [{"operator": "Exists"}, GPU_TAINT, DEDICATED, EVICT],
            }
        )
    )
    assert spec.placement is not None
    assert spec.placement.nodeSelector["agentscale.io/pool"] == "gpu-h100"
    assert len(spec.placement.tolerations) == 4


GPU_MODEL = {
    "name": "m",
    "modelRepository": "/models",
    "gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"},
}
OTHER = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
SAME = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_a_selector_naming_another_gpu_product_is_refused_naming_both() -> None:
    found = problems(models=[GPU_MODEL], placement={"nodeSelector": OTHER})
    assert found == [
        "spec.models[m]: gpu.product 'NVIDIA-H100-80GB-HBM3' and spec.placement.nodeSelector"
        "[nvidia.com/gpu.product] 'NVIDIA-A100-SXM4-80GB' ask for different GPUs, and no node has both; "
        "remove one of them or make them equal"
    ]
    found = problems(models=[{**GPU_MODEL, "placement": {"nodeSelector": OTHER}}])
    assert len(found) == 1 and "spec.models[m].placement.nodeSelector[nvidia.com/gpu.product]" in found[0]


def test_the_same_product_or_no_gpu_product_is_fine() -> None:
    parse_spec(minimal_spec(models=[GPU_MODEL], placement={"nodeSelector": SAME}))
    # The part's own selector overrides the workflow's: no conflict is left after the merge.
    parse_spec(
        minimal_spec(
            models=[{**GPU_MODEL, "placement": {"nodeSelector": SAME}}], placement={"nodeSelector": OTHER}
        )
    )
    # Without gpu.product the label is the user's to set (a CPU part, or a GPU part with count only).
    parse_spec(minimal_spec(models=[{**GPU_MODEL, "gpu": {"count": 1}}], placement={"nodeSelector": OTHER}))


def test_key_and_value_problems_are_reported_together() -> None:
    found = problems(placement={"nodeSelector": {"bad key": "x", "k": "bad value"}})
    assert any(m.startswith("spec.placement.nodeSelector: 'bad key': must be a label key") for m in found), (
        found
    )
    assert any(
        m.startswith("spec.placement.nodeSelector.k: 'bad value': must be a label value") for m in found
    )


def test_a_step_with_a_gpu_product_is_checked_too() -> None:
    spec = minimal_spec(placement={"nodeSelector": OTHER})
    spec["steps"][1]["gpu"] = {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}
    with pytest.raises(InvalidSpec) as exc:
        parse_spec(spec)
    assert [m.split(":")[0] for m in exc.value.problems] == ["spec.steps[b]"]
