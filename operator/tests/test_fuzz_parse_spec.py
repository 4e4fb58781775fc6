"""Fuzz ``parse_spec`` (and the render that follows it in every reconcile) with Hypothesis.

The operator parses every AgentWorkflow it sees; anything but a typed spec or ``InvalidSpec`` would be a crash
of its reconcile. Three kinds of input, each counted (docs/reliability.md, "Operator under faults", quotes the
counts this module prints):

- any mapping: random keys (the spec's own field names, misspellings, anything) and random JSON values;
- mutated real workflows: the shipped examples and the test suite's minimal spec, with a few random edits
  at random paths (a value replaced by one of another type or an extreme one, a key deleted, an unknown key
  added, a list item duplicated), so most of the spec stays valid and the checks behind the first are reached;
- workflow names: any text, with a valid spec.

What is checked: ``parse_spec`` returns a spec or raises ``InvalidSpec`` whose problems are non-empty strings;
a spec it returns renders (``render_workflow``) without an exception. Nothing else may escape.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from agentscale.api.models import AgentWorkflow
from agentscale.api.validation import InvalidSpec, parse_spec
from agentscale.render import render_workflow
from conftest import EXAMPLES, minimal_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TRIED: Counter[str] = Counter()

SEEDS = [yaml.safe_load(p.read_text())["spec"] for p in EXAMPLES] + [minimal_spec()]
# The spec's field names (from the seeds, at every depth), near misses and strangers.
FIELDS: list[str] = sorted(
    {k for seed in SEEDS for k in yaml.safe_dump(seed).replace(":", " ").split() if k.isidentifier()}
)
KEYS = st.sampled_from(FIELDS) | st.sampled_from(["concurency", "nxt", "replica", "", "x" * 300, "$ref", "é"])
KEYS = KEYS | st.text(max_size=20)

EXTREMES = st.sampled_from(
    [0, -1, 1, 2**31, 2**63, -(2**63), 10**100, 1.5, -0.0, float("inf"), float("-inf"), float("nan"), "", " ",
     "0", "-1", "1e999", "NaN", "x" * 10_000, "ü", "a/b", "a.b", "A", "redis://u:p@h:1/0", "file:///", "pvc://",
     "s3://bucket/m", None, True, False, [], {}, [None], {"": None}]
)  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | EXTREMES
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=5),
    max_leaves=20,
)


def check(spec: Any, name: str | None = "wf") -> None:
    """The property: a typed spec that renders, or InvalidSpec with messages; counted by outcome."""
    try:
        parsed = parse_spec(spec, name=name, allowed_images=())
    except InvalidSpec as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems), exc.problems
        TRIED["InvalidSpec"] += 1
        return
    objs = render_workflow(AgentWorkflow(metadata={"name": name or "wf", "namespace": "ns"}, spec=parsed))
    assert objs and all(o["metadata"]["name"] for o in objs)
    TRIED["accepted and rendered"] += 1


# ------------------------------------------------------------------------------------------ mutations


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    spec = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(spec) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(spec, path), path[-1]
        how = draw(st.sampled_from(["replace", "extreme", "delete", "add", "duplicate"]))
        if how == "replace":
            parent[last] = copy.deepcopy(draw(VALUES))  # never a shared constant: edits go into copies
        elif how == "extreme":
            parent[last] = copy.deepcopy(draw(EXTREMES))
        elif how == "delete":
            del parent[last]
        elif how == "add" and isinstance(parent[last], dict):
            parent[last][draw(KEYS)] = copy.deepcopy(draw(VALUES))
        elif how == "duplicate" and isinstance(parent[last], list) and parent[last]:
            parent[last].append(copy.deepcopy(parent[last][0]))
    return spec


# ------------------------------------------------------------------------------------------ the tests

FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nparse_spec fuzz: {sum(TRIED.values())} inputs tried: {dict(TRIED)}")


@settings(FUZZ, max_examples=800)
@given(spec=st.dictionaries(KEYS, VALUES, max_size=8))
def test_any_mapping_is_a_spec_or_invalid_spec(spec: dict[str, Any]) -> None:
    check(spec)


@settings(FUZZ, max_examples=1600)
@given(spec=mutated())
def test_mutated_workflows_are_specs_or_invalid_spec(spec: dict[str, Any]) -> None:
    check(spec)


@settings(max_examples=600, deadline=None, database=None)
@given(name=st.text(max_size=80) | st.sampled_from(["a", "a" * 63, "with.dot", "Upper", "-x", "x-", "1a"]))
def test_any_name_is_a_spec_or_invalid_spec(name: str) -> None:
    check(minimal_spec(), name=name)


def test_the_fuzzing_reached_both_outcomes() -> None:
    """Runs last (file order): the strategies produced valid specs as well as invalid ones."""
    assert TRIED["accepted and rendered"] > 0 and TRIED["InvalidSpec"] > 0, TRIED
    assert sum(TRIED.values()) >= 3000, TRIED
