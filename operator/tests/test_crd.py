"""The committed CRD is what the models generate, and it teaches the API field by field."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import yaml
from agentscale.api.crd import build_crd, render_crd_yaml
from tests_paths import CRD_FILE


def test_committed_crd_matches_models() -> None:
    committed = CRD_FILE.read_text()
    assert committed == render_crd_yaml(), (
        "crds/agentscale.io_agentworkflows.yaml is stale: run `agentscale crd --write "
        "crds/agentscale.io_agentworkflows.yaml` and commit the result"
    )


def test_crd_is_a_valid_1_34_object() -> None:
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), "1.34", strict=True)


def _walk(schema: dict[str, Any], path: str, out: list[str]) -> None:
    for name, prop in (schema.get("properties") or {}).items():
        here = f"{path}.{name}"
        if "description" not in prop:
            out.append(here)
        _walk(prop, here, out)
        if isinstance(prop.get("items"), dict):
            _walk(prop["items"], here + "[]", out)
        if isinstance(prop.get("additionalProperties"), dict):
            _walk(prop["additionalProperties"], here + "{}", out)


def test_every_spec_and_status_field_has_a_description() -> None:
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing: list[str] = []
    for part in ("spec", "status"):
        _walk(root["properties"][part], part, missing)
    assert missing == []


def test_schema_is_structural() -> None:
    """No constructs a structural schema forbids: refs, nulls, titles, additionalProperties: false."""
    text = yaml.safe_dump(build_crd())
    for bad in ("$ref", "$defs", "title:", "type: 'null'", "additionalProperties: false", "anyOf"):
        assert bad not in text


def test_defaults_and_rules_present() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    step = spec["properties"]["steps"]["items"]
    assert step["properties"]["scaling"]["default"]["mode"] == "fixed"
    assert step["properties"]["next"]["default"] == []
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("exists_one" in r for r in rules)
    assert spec["properties"]["steps"]["x-kubernetes-list-type"] == "map"
    crd = build_crd()
    assert crd["spec"]["names"]["shortNames"] == ["aw"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_committed_api_reference_matches_schema() -> None:
    from agentscale.api.reference import render_reference
    from tests_paths import ROOT

    assert (ROOT / "docs" / "api.md").read_text() == render_reference(), (
        "docs/api.md is stale: run `agentscale docs --write docs/api.md`"
    )


def test_quantities_are_checked_by_the_api_server() -> None:
    """Every requests/limits map of the CRD checks its values as quantities and bounds its size."""
    from agentscale.api.models import MAX_RESOURCES, QUANTITY_ADVICE, QUANTITY_RULE

    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    found: list[str] = []

    def visit(node: dict[str, Any], path: str) -> None:
        props = node.get("properties") or {}
        if set(props) == {"requests", "limits"}:
            for key in ("requests", "limits"):
                values = props[key]["additionalProperties"]
                assert values["x-kubernetes-int-or-string"] is True
                assert values["maxLength"] == 64 and "pattern" not in values  # refused with advice
                assert values["x-kubernetes-validations"] == [
                    {"rule": QUANTITY_RULE, "message": QUANTITY_ADVICE}
                ]
                assert props[key]["maxProperties"] == MAX_RESOURCES
                found.append(f"{path}.{key}")
        for name, prop in props.items():
            visit(prop, f"{path}.{name}")
            if isinstance(prop.get("items"), dict):
                visit(prop["items"], f"{path}.{name}[]")

    visit(root, "spec")
    assert sorted(found) == [
        "spec.gateway.resources.limits",
        "spec.gateway.resources.requests",
        "spec.models[].resources.limits",
        "spec.models[].resources.requests",
        "spec.steps[].resources.limits",
        "spec.steps[].resources.requests",
    ]
