"""Caching in the API and the renderers: Triton's response cache (config.pbtxt and the server's arguments) and
the step result cache (the worker's environment), with the field absent rendering exactly as before."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from agentscale.api.crd import build_crd
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import InvalidSpec, parse_spec
from agentscale.render import labels as L
from agentscale.render import render_workflow
from agentscale.render.triton import cache_args, config_pbtxt, deployment
from agentscale.render.workers import step_deployment, step_env
from agentscale_worker.config import Settings
from conftest import minimal_spec

UID = "00000000-0000-0000-0000-000000000001"
CACHE_ENV = (
    "AGENTSCALE_RESULT_CACHE_TTL_S",
    "AGENTSCALE_RESULT_CACHE_MAX_ENTRIES",
    "AGENTSCALE_RESULT_CACHE_MAX_ENTRY_BYTES",
    "AGENTSCALE_RESULT_CACHE_VERSION",
)


def wf_from(spec: dict[str, Any]) -> AgentWorkflow:
    return AgentWorkflow(metadata={"name": "wf", "namespace": "ns"}, spec=parse_spec(spec))


def with_model(**fields: Any) -> dict[str, Any]:
    spec = minimal_spec()
    spec["models"][0].update(fields)
    return spec


def with_step(index: int = 0, **fields: Any) -> dict[str, Any]:
    spec = minimal_spec()
    spec["steps"][index].update(fields)
    return spec


def problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(spec)
    return err.value.problems


def env_of(wf: AgentWorkflow, step: int = 0) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in step_env(wf, wf.spec.steps[step])}


# ----------------------------------------------------------------------------------------- response cache


def test_without_the_field_nothing_changes() -> None:
    plain = render_workflow(wf_from(minimal_spec()), UID)
    off = render_workflow(wf_from(with_model(responseCache={"enabled": False, "size": "1Gi"})), UID)
    assert off == plain
    assert "response_cache" not in config_pbtxt(wf_from(minimal_spec()).spec.models[0])


def test_response_cache_is_rendered_into_config_and_server_arguments() -> None:
    wf = wf_from(with_model(responseCache={}))
    model = wf.spec.models[0]
    text = config_pbtxt(model)
    assert text.endswith("response_cache {\n  enable: true\n}\n")
    plain = config_pbtxt(wf_from(minimal_spec()).spec.models[0])
    assert text == plain + "response_cache {\n  enable: true\n}\n"  # only appended: the rest is unchanged
    args = deployment(wf, model)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-1] == "--cache-config=local,size=268435456"  # the default, 256Mi
    assert sum(a.startswith("--cache-config") for a in args) == 1


def test_a_cache_change_rolls_the_server() -> None:
    """config.pbtxt changes, so the pod template's config hash does too (the pods restart with the cache)."""
    before = deployment(wf_from(minimal_spec()), wf_from(minimal_spec()).spec.models[0])
    wf = wf_from(with_model(responseCache={"size": "1Gi"}))
    after = deployment(wf, wf.spec.models[0])
    ann = L.CONFIG_HASH_ANNOTATION
    assert (
        after["spec"]["template"]["metadata"]["annotations"][ann]
        != (before["spec"]["template"]["metadata"]["annotations"][ann])
    )
    kubernetes_validate.validate(after, "1.34", strict=True)


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1Mi", 1 << 20), ("1Gi", 1 << 30), (2097152, 2097152), ("3M", 3_000_000), ("2e6", 2_000_000)],
)
def test_cache_sizes_are_bytes(size: str | int, expected: int) -> None:
    model = wf_from(with_model(responseCache={"size": size})).spec.models[0]
    assert cache_args(model) == [f"--cache-config=local,size={expected}"]


@pytest.mark.parametrize("size", ["500m", "1Ki", 1000, "100Gi", "1.5", "banana", "-1Gi", "1GB"])
def test_bad_cache_sizes_are_refused_naming_the_field_and_the_bounds(size: str | int) -> None:
    found = problems(with_model(responseCache={"size": size}))
    assert any(
        p.startswith("spec.models[0].responseCache.size:") and "from 1Mi to 64Gi" in p for p in found
    ), found


def test_the_cache_must_fit_in_half_the_servers_memory() -> None:
    found = problems(with_model(responseCache={"size": "9Gi"}))
    assert found == [
        "spec.models[0]: responseCache.size (9Gi) must be at most half of the server's memory limit (16Gi): "
        "lower the size or raise resources.limits.memory"
    ]
    found = problems(with_model(responseCache={"size": "2Gi"}, resources={"limits": {"memory": "3Gi"}}))
    assert "(3Gi)" in found[0]
    # a larger limit, or a request above the default limit (which then becomes the limit), admits it
    parse_spec(with_model(responseCache={"size": "9Gi"}, resources={"limits": {"memory": "32Gi"}}))
    parse_spec(with_model(responseCache={"size": "9Gi"}, resources={"requests": {"memory": "20Gi"}}))
    parse_spec(with_model(responseCache={"size": "9Gi", "enabled": False}))


def test_unknown_cache_fields_get_a_suggestion() -> None:
    assert problems(with_model(responseCache={"sizeBytes": 1 << 20})) == [
        "spec.models[0].responseCache.sizeBytes: unknown field; did you mean `size`?"
    ]


# ----------------------------------------------------------------------------------------- result cache


def test_without_a_result_cache_the_worker_gets_no_cache_settings() -> None:
    plain = wf_from(minimal_spec())
    assert not set(CACHE_ENV) & set(env_of(plain))
    off = wf_from(with_step(resultCache={"enabled": False, "ttlSeconds": 5}))
    assert step_deployment(off, off.spec.steps[0]) == step_deployment(plain, plain.spec.steps[0])


def test_result_cache_settings_reach_the_worker() -> None:
    wf = wf_from(with_step(resultCache={"ttlSeconds": 60, "maxEntries": 500, "maxEntryBytes": 4096}))
    env = env_of(wf)
    assert env["AGENTSCALE_RESULT_CACHE_TTL_S"] == "60"
    assert env["AGENTSCALE_RESULT_CACHE_MAX_ENTRIES"] == "500"
    assert env["AGENTSCALE_RESULT_CACHE_MAX_ENTRY_BYTES"] == "4096"
    assert len(env["AGENTSCALE_RESULT_CACHE_VERSION"]) == 16
    assert not set(CACHE_ENV) & set(env_of(wf, 1))  # only the step that asked
    names = [e["name"] for e in step_env(wf, wf.spec.steps[0])]
    assert names.index("AGENTSCALE_RESULT_CACHE_TTL_S") < len(names)  # before the user's env (may override)
    kubernetes_validate.validate(step_deployment(wf, wf.spec.steps[0]), "1.34", strict=True)


def _version(spec: dict[str, Any]) -> str:
    return env_of(wf_from(spec))["AGENTSCALE_RESULT_CACHE_VERSION"]


def test_the_key_version_follows_what_the_output_depends_on() -> None:
    base = with_step(resultCache={})
    v0 = _version(base)

    def changed(path: tuple[Any, ...], value: Any) -> str:
        spec = copy.deepcopy(base)
        node: Any = spec
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        return _version(spec)

    # what the step runs and what its model runs: a new cache
    assert changed(("steps", 0, "resultCache", "version"), "v2") != v0
    assert changed(("steps", 0, "image"), "agentscale/worker:0.2.0") != v0
    assert changed(("steps", 0, "args"), ["--handler", "pkg.mod:other"]) != v0
    assert changed(("steps", 0, "env"), [{"name": "FLAG", "value": "1"}]) != v0
    assert changed(("models", 0, "image"), "nvcr.io/nvidia/tritonserver:25.01-py3") != v0
    assert changed(("models", 0, "parameters"), {"agentscale_seed": "1"}) != v0
    # how much of it runs, and where: the same cache
    assert changed(("steps", 0, "scaling"), {"mode": "fixed", "replicas": 3, "maxReplicas": 5}) == v0
    assert changed(("steps", 0, "concurrency"), 64) == v0
    assert changed(("models", 0, "scaling"), {"mode": "fixed", "replicas": 2}) == v0
    assert changed(("steps", 0, "resultCache", "ttlSeconds"), 5) == v0


@pytest.mark.parametrize(
    ("cache", "needle"),
    [
        (
            {"ttlSeconds": 0},
            "spec.steps[0].resultCache.ttlSeconds: Input should be greater than or equal to 1",
        ),
        (
            {"maxEntries": 0},
            "spec.steps[0].resultCache.maxEntries: Input should be greater than or equal to 1",
        ),
        (
            {"maxEntryBytes": 10},
            "spec.steps[0].resultCache.maxEntryBytes: Input should be greater than or equal",
        ),
        ({"ttlSeconds": 10**9}, "spec.steps[0].resultCache.ttlSeconds: Input should be less than or equal"),
        ({"version": "v 2"}, "spec.steps[0].resultCache.version: 'v 2': must be letters, digits"),
        ({"ttlSecond": 5}, "spec.steps[0].resultCache.ttlSecond: unknown field; did you mean `ttlSeconds`?"),
    ],
)
def test_bad_result_cache_settings_name_the_field(cache: dict[str, Any], needle: str) -> None:
    found = problems(with_step(resultCache=cache))
    assert any(needle in p for p in found), found


# ----------------------------------------------------------------------------------------- the CRD


def test_the_crd_carries_the_cache_fields_and_the_size_rule() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rc = spec["properties"]["models"]["items"]["properties"]["responseCache"]
    assert rc["properties"]["size"]["x-kubernetes-int-or-string"] is True
    (rule,) = rc["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".size" and "1Mi" in rule["rule"] and "64Gi" in rule["rule"]
    res = spec["properties"]["steps"]["items"]["properties"]["resultCache"]["properties"]
    assert res["ttlSeconds"]["minimum"] == 1 and res["maxEntries"]["minimum"] == 1


def test_the_worker_reads_what_the_operator_renders() -> None:
    """The contract across the two packages: the rendered env parses into the worker's cache settings."""
    wf = wf_from(with_step(resultCache={"ttlSeconds": 90, "maxEntries": 7, "maxEntryBytes": 2048}))
    env = {e["name"]: e.get("value", "ns") for e in step_env(wf, wf.spec.steps[0])}
    s = Settings.from_env(env)
    assert (s.result_cache_ttl_s, s.result_cache_max_entries, s.result_cache_max_entry_bytes) == (90, 7, 2048)
    assert s.result_cache_version == env["AGENTSCALE_RESULT_CACHE_VERSION"]
    plain = wf_from(minimal_spec())
    env = {e["name"]: e.get("value", "ns") for e in step_env(plain, plain.spec.steps[0])}
    assert Settings.from_env(env).result_cache_ttl_s == 0  # no cache
