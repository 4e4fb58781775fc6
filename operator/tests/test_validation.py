"""Checks at the operator's boundary: clear messages naming the field, and no crash on any input."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from agentscale.api.models import QUANTITY, ScalingMode, parse_quantity
from agentscale.api.validation import InvalidSpec, find_cycle, parse_spec
from conftest import minimal_spec
from hypothesis import given, settings
from hypothesis import strategies as st


def problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(spec)
    return err.value.problems


def test_minimal_spec_is_valid() -> None:
    parsed = parse_spec(minimal_spec())
    assert [s.name for s in parsed.steps] == ["a", "b"]
    assert parsed.steps[0].scaling.mode == ScalingMode.fixed


def test_cycle_is_named() -> None:
    spec = minimal_spec(
        steps=[{"name": "a", "next": ["b"]}, {"name": "b", "next": ["c"]}, {"name": "c", "next": ["a"]}]
    )
    (msg,) = problems(spec)
    assert "cycle a -> b -> c -> a" in msg


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": []}) is None
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"x": ["y", "z"], "y": ["z"], "z": []}) is None
    assert find_cycle({"x": ["y"], "y": ["z"], "z": ["y"]}) == ["y", "z", "y"]
    # A long chain does not recurse.
    chain = {str(i): [str(i + 1)] for i in range(5000)}
    chain["5000"] = ["0"]
    cycle = find_cycle(chain)
    assert cycle is not None and len(cycle) == 5002


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"steps": [{"name": "a", "model": "nope"}]}, "spec.steps[a].model: 'nope' is not in spec.models"),
        ({"steps": [{"name": "a", "next": ["ghost"]}]}, "spec.steps[a].next: 'ghost' is not a step"),
        ({"steps": [{"name": "a"}, {"name": "a"}]}, "spec.steps: duplicate names a"),
        ({"steps": [{"name": "m"}]}, "named both a step and a model"),
        ({"steps": [{"name": "Bad_Name"}]}, "spec.steps[0].name"),
        ({"steps": [{"name": "a", "scaling": {"replicas": -1}}]}, "spec.steps[0].scaling.replicas"),
        ({"steps": [{"name": "a", "gpu": {"count": 1, "migProfile": "1g.10gb"}}]}, "not both"),
        ({"steps": [{"name": "a", "scaling": {"minReplicas": 5, "maxReplicas": 2}}]}, "minReplicas"),
        ({"steps": [{"name": "a", "colour": "red"}]}, "spec.steps[0].colour"),
        ({"queue": {}}, "spec.queue"),
        (
            {"steps": [{"name": "a", "resources": {"requests": {"cpu": "banana"}}}]},
            "spec.steps[0].resources.requests.cpu: 'banana' is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)",
        ),
        (
            {"steps": [{"name": "a", "resources": {"limits": {"memory": "-1Gi"}}}]},
            "spec.steps[0].resources.limits.memory: '-1Gi' is not a Kubernetes quantity",
        ),
        (
            {"steps": [{"name": "a", "resources": {"requests": {"cpu": -2}}}]},
            "spec.steps[0].resources.requests.cpu: -2 is not a Kubernetes quantity",
        ),
        (
            {"steps": [{"name": "a", "resources": {"requests": {"cpu": 0.5}}}]},
            "spec.steps[0].resources.requests.cpu: 0.5 is not a Kubernetes quantity",
        ),
        (
            {"gateway": {"resources": {"requests": {"memory": "1GB"}}}},
            "spec.gateway.resources.requests.memory: '1GB' is not a Kubernetes quantity",
        ),
        (
            {"steps": [{"name": "a", "resources": {"requests": {"CPU cores": "1"}}}]},
            "spec.steps[0].resources.requests: 'CPU cores' is not a resource name",
        ),
    ],
)
def test_bad_input_names_the_field(override: dict[str, Any], needle: str) -> None:
    found = problems(minimal_spec(**override))
    assert any(needle in p for p in found), found


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_any_input_is_either_valid_or_invalid_spec(garbage: Any) -> None:
    """The operator's parse never raises anything but InvalidSpec, whatever is in the object."""
    spec = garbage if isinstance(garbage, dict) else {"steps": garbage}
    try:
        parse_spec(spec)
    except InvalidSpec as exc:
        assert exc.problems


GOOD_QUANTITIES = [
    ("500m", Decimal("0.5")),
    ("2", Decimal(2)),
    (2, Decimal(2)),
    (0, Decimal(0)),
    ("1.5Gi", Decimal(1536 * 1024 * 1024)),
    ("512Mi", Decimal(512 * 1024 * 1024)),
    ("1e3", Decimal(1000)),
    ("1E", Decimal(10) ** 18),
    (".5", Decimal("0.5")),
    ("+1k", Decimal(1000)),
    ("100n", Decimal("1e-7")),
]
BAD_QUANTITIES = ["banana", "", "-1", "1GB", "1 Gi", "1e", "1.2.3", "Gi", "1Ki1", "0x10", "1" * 65]


@pytest.mark.parametrize(("text", "value"), GOOD_QUANTITIES)
def test_quantities_kubernetes_accepts_are_accepted(text: str | int, value: Decimal) -> None:
    assert parse_quantity(text) == value
    spec = parse_spec(minimal_spec(steps=[{"name": "a", "resources": {"requests": {"cpu": text}}}]))
    assert spec.steps[0].resources.requests["cpu"] == text  # kept as written: the renderer passes it on
    if isinstance(text, str):
        assert re.match(QUANTITY, text), "parse_quantity reads quantities with this pattern"


@pytest.mark.parametrize("text", BAD_QUANTITIES)
def test_bad_quantities_are_refused_by_the_model_and_its_pattern(text: str) -> None:
    assert parse_quantity(text) is None
    assert len(text) > 64 or not re.match(QUANTITY, text)
    assert any(
        "is not a Kubernetes quantity" in p
        for p in problems(minimal_spec(steps=[{"name": "a", "resources": {"limits": {"memory": text}}}]))
    )


def test_resource_names() -> None:
    good = {
        "cpu": "1",
        "memory": "1Gi",
        "ephemeral-storage": "1Gi",
        "hugepages-2Mi": "2Mi",
        "example.com/foo": 1,
    }
    assert parse_spec(minimal_spec(steps=[{"name": "a", "resources": {"limits": good}}]))
    for bad in ("", "/cpu", "Example.com/foo", "cpu!", "a" * 254):
        found = problems(minimal_spec(steps=[{"name": "a", "resources": {"limits": {bad: "1"}}}]))
        assert any("is not a resource name" in p for p in found), (bad, found)


def test_gateway_validator_is_a_module_function_reference() -> None:
    (msg,) = problems(minimal_spec(gateway={"validator": "rm -rf /"}))
    assert msg.startswith("spec.gateway.validator"), msg
    parse_spec(minimal_spec(gateway={"validator": "agentscale_worker.examples.recommendation:validate"}))
