"""Admission as advice: misspelt fields get a suggestion, patterns are explained rather than quoted,
credentials in redisUrl and names that cannot prefix every child are refused; the operator's image
allow-list."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from agentscale.api import models as m
from agentscale.api.crd import build_crd
from agentscale.api.validation import (
    ALLOWED_IMAGE_PREFIXES_ENV,
    InvalidSpec,
    configured_image_prefixes,
    image_allowed,
    parse_image_prefixes,
    parse_spec,
    workflow_name_problems,
)
from agentscale.cache import ClusterCache
from conftest import minimal_spec
from hypothesis import given, settings
from hypothesis import strategies as st


def problems(spec: dict[str, Any], **kw: Any) -> list[str]:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(spec, **kw)
    return err.value.problems


# ---------------------------------------------------------------------------------------- misspelt fields


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"steps": [{"name": "a", "concurency": 3}]},
            "spec.steps[0].concurency: unknown field; did you mean `concurrency`?",
        ),
        (
            {"queue": {"redisURL": "redis://r:6379/0"}},
            "spec.queue.redisURL: unknown field; did you mean `redisUrl`?",
        ),
        ({"modles": []}, "spec.modles: unknown field; did you mean `models`?"),
        ({"gateway": {"replica": 2}}, "spec.gateway.replica: unknown field; did you mean `replicas`?"),
        (
            {"steps": [{"name": "a", "scaling": {"mode": "hpa", "maxReplica": 3}}]},
            "spec.steps[0].scaling.maxReplica: unknown field; did you mean `maxReplicas`?",
        ),
        (
            {"networkPolicy": {"enable": False}},
            "spec.networkPolicy.enable: unknown field; did you mean `enabled`?",
        ),
    ],
)
def test_a_misspelt_field_gets_a_suggestion(override: dict[str, Any], expected: str) -> None:
    assert expected in problems(minimal_spec(**override))


def test_an_unknown_field_with_no_near_match_lists_the_fields() -> None:
    (msg,) = problems(minimal_spec(slo={"colour": "red"}))
    assert msg == "spec.slo.colour: unknown field; the fields here are `p95LatencyMs`, `targetThroughputRps`"


# ---------------------------------------------------------------------------------------- advice, not regexes


@pytest.mark.parametrize(
    ("override", "field", "advice"),
    [
        ({"steps": [{"name": "Bad_Name"}]}, "spec.steps[0].name", "(e.g. 'bad-name')"),
        (
            {"models": [{"name": "m", "modelRepository": "models/m"}]},
            "spec.models[0].modelRepository",
            "an absolute path inside the image (/models or file:///models) or a PersistentVolumeClaim",
        ),
        ({"queue": {"redisUrl": "http://redis:6379"}}, "spec.queue.redisUrl", "redis://<host>:<port>/<db>"),
        (
            {"steps": [{"name": "a", "gpu": {"migProfile": "10gb"}}]},
            "spec.steps[0].gpu.migProfile",
            "e.g. 1g.10gb, 3g.40gb",
        ),
        (
            {"steps": [{"name": "a", "gpu": {"count": 1, "product": "NVIDIA H100"}}]},
            "spec.steps[0].gpu.product",
            "(e.g. 'NVIDIA-H100')",
        ),
        (
            {"steps": [{"name": "a", "env": [{"name": "MY VAR", "value": "1"}]}]},
            "spec.steps[0].env[0].name",
            "(e.g. 'MY_VAR')",
        ),
        ({"gateway": {"validator": "rm -rf /"}}, "spec.gateway.validator", "package.module:function"),
        (
            {"serviceAccount": {"name": "My_Account"}},
            "spec.serviceAccount.name",
            "DNS-1123 subdomain",
        ),
    ],
)
def test_a_bad_value_is_refused_with_advice_not_a_regex(
    override: dict[str, Any], field: str, advice: str
) -> None:
    (msg,) = problems(minimal_spec(**override))
    assert msg.startswith(field + ": "), msg
    assert advice in msg, msg
    assert "pattern" not in msg and "^" not in msg and "$" not in msg, msg


def _rules(node: Any, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        out.extend(node.get("x-kubernetes-validations") or [])
        for value in node.values():
            _rules(value, out)
    elif isinstance(node, list):
        for value in node:
            _rules(value, out)
    return out


def test_the_crd_refuses_with_the_same_advice_and_quotes_no_pattern() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    messages = [r["message"] for r in _rules(spec, [])]
    assert any(m.startswith("must not carry credentials") and "redisSecretRef" in m for m in messages)
    assert any("absolute path inside the image" in m for m in messages)
    assert not any("^" in m for m in messages)
    patterns: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "pattern" in node and isinstance(node["pattern"], str):
                patterns.append(node["pattern"])
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(spec)
    assert patterns == []  # quantities too are checked by CEL (the API server's own parser), with advice


# ------------------------------------------------------------------------------------ redisUrl credentials


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@redis:6379/0",
        "redis://user:s3cret@redis:6379",
        "rediss://u@r/0",
        "redis://r:6379/0?password=s3cret",
    ],
)
def test_redis_url_with_credentials_is_refused_without_repeating_them(url: str) -> None:
    (msg,) = problems(minimal_spec(queue={"redisUrl": url}))
    assert msg.startswith("spec.queue.redisUrl: must not carry credentials")
    assert "spec.queue.redisSecretRef" in msg
    assert "s3cret" not in msg


@pytest.mark.parametrize("url", ["redis://redis:6379/0", "rediss://redis.ns.svc:6380", "redis://r/0?db=1"])
def test_redis_url_without_credentials_is_accepted(url: str) -> None:
    assert parse_spec(minimal_spec(queue={"redisUrl": url})).queue.redisUrl == url


def test_credential_rule_in_the_crd_agrees_with_the_model() -> None:
    """The CRD's CEL rule and pydantic read the same pattern: RE2 and Python agree on it for these URLs."""
    queue = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["queue"]
    (rule,) = [
        r["rule"]
        for r in queue["properties"]["redisUrl"]["x-kubernetes-validations"]
        if "credentials" in r["message"]
    ]
    match = re.fullmatch(r"!self\.matches\('(.*)'\)", rule)
    assert match is not None
    pattern = match.group(1).replace("\\\\", "\\")
    assert re.search(pattern, "redis://:pw@r:6379/0") and not re.search(pattern, "redis://r:6379/0")


# ---------------------------------------------------------------------------------------- workflow names


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("with.dot", "'with-dot'"), ("9lives", "'wf-9lives'"), ("a.b.c", "'a-b-c'")],
)
def test_a_name_that_cannot_prefix_every_child_is_refused(name: str, suggestion: str) -> None:
    (msg,) = problems(minimal_spec(), name=name)
    assert msg.startswith(f"metadata.name {name!r} cannot prefix the workflow's Service names")
    assert "DNS-1035" in msg and suggestion in msg


def test_the_longest_name_leaves_room_for_the_longest_suffix() -> None:
    longest = max(len(p) for p in m.FIXED_PARTS)
    assert m.MAX_WORKFLOW_NAME + 1 + longest == 63
    ok = "w" * m.MAX_WORKFLOW_NAME
    assert workflow_name_problems(ok) == []
    (msg,) = workflow_name_problems(ok + "w")
    assert f"at most {m.MAX_WORKFLOW_NAME}" in msg
    rules = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert any(r["rule"] == f"size(self.metadata.name) <= {m.MAX_WORKFLOW_NAME}" for r in rules)
    assert any("DNS-1035" in r["message"] and "messageExpression" in r for r in rules)


def test_the_operator_reports_a_bad_name_stored_before_the_rule_existed() -> None:
    cache = ClusterCache()
    parsed = cache.parsed(("ns", "with.dot"), {"uid": "u", "generation": 1, "spec": minimal_spec()})
    assert parsed.workflow is None
    assert "recreate it as e.g. 'with-dot'" in parsed.problems[0]


# ---------------------------------------------------------------------------------------- image allow-list


@pytest.fixture
def allow_list(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(
        ALLOWED_IMAGE_PREFIXES_ENV, " registry.example.com/team/ , nvcr.io/nvidia/tritonserver,"
    )
    configured_image_prefixes.cache_clear()
    yield
    monkeypatch.delenv(ALLOWED_IMAGE_PREFIXES_ENV)
    configured_image_prefixes.cache_clear()


def test_prefixes_are_read_once_from_the_environment(allow_list: None) -> None:
    assert configured_image_prefixes() == ("registry.example.com/team/", "nvcr.io/nvidia/tritonserver")
    assert parse_image_prefixes("") == ()


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("registry.example.com/team/worker:1", True),
        ("nvcr.io/nvidia/tritonserver:24.10-py3", True),
        ("nvcr.io/nvidia/tritonserver@sha256:abc", True),
        ("nvcr.io/nvidia/tritonserver-evil:1", False),  # a prefix matches at a name boundary only
        ("registry.example.com/team-b/worker:1", False),
        ("docker.io/library/python:3.12", False),
    ],
)
def test_image_prefixes_match_at_a_boundary(image: str, allowed: bool) -> None:
    prefixes = ("registry.example.com/team/", "nvcr.io/nvidia/tritonserver")
    assert image_allowed(image, prefixes) is allowed
    assert image_allowed(image, ()) is True  # no list: any image


def test_an_image_outside_the_allow_list_is_reported_with_the_image_and_the_list(allow_list: None) -> None:
    spec = minimal_spec(
        steps=[{"name": "a", "image": "evil.example/miner:1"}],
        models=[],
        gateway={"image": "registry.example.com/team/worker:1"},
    )
    cache = (
        ClusterCache()
    )  # the operator's path: the problems become Degraded/InvalidSpec and a Warning Event
    parsed = cache.parsed(("ns", "wf"), {"uid": "u", "generation": 1, "spec": spec})
    (msg,) = parsed.problems
    assert msg.startswith("spec.steps[a].image: image 'evil.example/miner:1' is not allowed")
    assert "registry.example.com/team/, nvcr.io/nvidia/tritonserver" in msg
    assert ALLOWED_IMAGE_PREFIXES_ENV in msg


def test_without_an_allow_list_any_image_is_accepted() -> None:
    configured_image_prefixes.cache_clear()
    assert parse_spec(minimal_spec(steps=[{"name": "a", "image": "anything:latest"}], models=[]))


# ------------------------------------------------------------------------------------------ fuzz


_KEYS = st.sampled_from(["name", "image", "concurency", "scaling", "gpu", "env", "nxt", "resources", "x"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(step=st.dictionaries(_KEYS, _VALUES, max_size=5), name=st.text(max_size=70))
def test_any_step_and_name_give_a_typed_spec_or_problems(step: dict[str, Any], name: str) -> None:
    """Unknown keys at any depth, bad names and odd values: parse_spec returns a spec or raises InvalidSpec
    with one message per problem, never anything else (the suggestion lookup walks the models safely)."""
    try:
        parse_spec(minimal_spec(steps=[step]), name=name, allowed_images=("registry.example.com/",))
    except InvalidSpec as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
