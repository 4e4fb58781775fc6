"""The Helm chart's facts that need no helm binary: its CRD and RBAC rules are copies of the one source,
and its values schema is closed. Rendering, `helm lint`, install, upgrade and uninstall are checked in
e2e/tests/test_chart_render.py and test_chart_install.py, where helm and a cluster exist.
"""

from __future__ import annotations

import copy
import json
import tomllib
from typing import Any

import jsonschema
import pytest
import yaml
from agentscale import kinds, rbac
from tests_paths import ROOT

CHART = ROOT / "charts" / "agentscale"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of -f values over the chart's values.yaml (maps merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------- one source


def test_chart_crds_are_copies_of_crds_folder() -> None:
    source = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert source, "no CRDs under crds/"
    assert chart == source, (
        "charts/agentscale/crds/ drifted from crds/: run `cp crds/*.yaml charts/agentscale/crds/`"
    )


def test_rbac_rules_files_are_generated_from_the_kinds_table() -> None:
    committed = {p.name: p.read_text() for p in (CHART / "files").glob("*-rules.yaml")}
    assert committed == rbac.rendered_files(), (
        "charts/agentscale/files/*-rules.yaml drifted from operator/agentscale/rbac.py: run "
        f"`.venv/bin/python -m agentscale.rbac --write {rbac.RULES_DIR}` and commit the result"
    )


def test_prometheus_recording_rules_file_is_generated_from_the_queries() -> None:
    from agentscale.cli import main

    path = CHART / "files" / "prometheus-recording.yaml"
    fresh = path.with_name(".fresh-prometheus-recording.yaml")
    try:
        main(["prometheus-rules", "--write", str(fresh)])
        assert path.read_text() == fresh.read_text(), (
            f"{path.relative_to(ROOT)} drifted from resource_controller/promql.py: run "
            f"`.venv/bin/agentscale prometheus-rules --write {path.relative_to(ROOT)}` (make rules)"
        )
    finally:
        fresh.unlink(missing_ok=True)


def test_rbac_templates_read_the_generated_rules() -> None:
    text = (CHART / "templates" / "rbac.yaml").read_text()
    for name in rbac.rendered_files():
        assert f'.Files.Get "files/{name}"' in text


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_cluster_rules_cover_exactly_the_kinds_table() -> None:
    grants = _grants(rbac.cluster_rules())
    expected: dict[tuple[str, str], set[str]] = {
        (k.group, k.plural): {"create", "delete", "list", "patch", "watch"} for k in kinds.OWNED
    }
    deployments = kinds.owned("Deployment")
    expected[(deployments.group, "deployments/scale")] = {"patch"}
    expected[(kinds.WORKFLOW.group, kinds.WORKFLOW.plural)] = {"get", "list", "watch"}
    expected[(kinds.WORKFLOW.group, f"{kinds.WORKFLOW.plural}/status")] = {"patch"}
    expected[(kinds.POD.group, kinds.POD.plural)] = {"list", "watch"}
    # GPU rebalancing (resource_controller/rebalance_actuator.py): evict, nominate, list nodes
    expected[(kinds.POD.group, "pods/eviction")] = {"create"}
    expected[(kinds.POD.group, "pods/status")] = {"patch"}
    expected[(kinds.POD.group, "pods/resize")] = {"patch"}  # right-sizing (rightsize_actuator.py)
    expected[(kinds.NODE.group, kinds.NODE.plural)] = {"list"}
    expected[(kinds.EVENT.group, kinds.EVENT.plural)] = {"create", "list", "watch"}  # + FailedMount watch
    expected[("apiextensions.k8s.io", "customresourcedefinitions")] = {"list", "watch"}  # kopf's discovery
    assert grants == expected


def test_namespace_rules_are_leases_only() -> None:
    assert _grants(rbac.namespace_rules()) == {("coordination.k8s.io", "leases"): {"create", "get", "update"}}


@pytest.mark.parametrize(
    "rules", [rbac.cluster_rules(), rbac.namespace_rules()], ids=["cluster", "namespace"]
)
def test_rules_grant_no_secrets_no_wildcards_no_escalation(rules: list[dict[str, Any]]) -> None:
    for (group, resource), verbs in _grants(rules).items():
        assert "*" not in group and "*" not in resource and "*" not in verbs
        assert resource.split("/")[0] != "secrets"
        # no pod subresources (exec, attach, portforward, log) but the rebalancer's eviction and nomination
        # and right-sizing's in-place resize
        assert not resource.startswith("pods/") or (resource, verbs) in (
            ("pods/eviction", {"create"}),
            ("pods/status", {"patch"}),
            ("pods/resize", {"patch"}),
        )
        assert not verbs & {"escalate", "bind", "impersonate", "deletecollection"}
        # Owned objects change by server-side apply (patch), never by a full update; only Leases update.
        assert "update" not in verbs or resource == "leases"


# ------------------------------------------------------------------------------------------- values


def _objects(schema: dict[str, Any], path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    types = schema.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        out.append((path, schema))
    for name, sub in (schema.get("properties") or {}).items():
        out.extend(_objects(sub, f"{path}.{name}"))
    if isinstance(schema.get("items"), dict):
        out.extend(_objects(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        out.extend(_objects(schema["additionalProperties"], f"{path}{{}}"))
    return out


def test_values_schema_is_closed_everywhere() -> None:
    """Every object either lists its keys (additionalProperties: false) or is a map of strings."""
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    open_objects = [
        path
        for path, obj in _objects(SCHEMA)
        if obj.get("additionalProperties") is not False
        and obj.get("additionalProperties") != {"type": "string"}
    ]
    assert open_objects == []


def test_every_value_is_in_the_schema_and_the_defaults_pass() -> None:
    jsonschema.validate(VALUES, SCHEMA)


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_pass_the_schema(path: Any) -> None:
    jsonschema.validate(_merge(VALUES, yaml.safe_load(path.read_text()) or {}), SCHEMA)


def test_ci_values_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {"default-values.yaml", "redis-values.yaml", "full-values.yaml"}


@pytest.mark.parametrize(
    "override",
    [
        {"replicasCount": 1},  # a typo at the top
        {"operator": {"helthPort": 8080}},  # a typo inside
        {"redis": {"image": {"digest": "sha256:0"}}},
        {"replicaCount": -1},  # any count from 0 up (one leads), never below
        {"securityContext": {"allowPrivilegeEscalation": True}},
        {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"image": {"pullPolicy": "Sometimes"}},
    ],
)
def test_schema_rejects(override: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_merge(VALUES, override), SCHEMA)


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
