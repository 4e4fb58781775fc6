"""Checks the API server cannot make with CEL, and parsing at the boundary into the typed model.

Everything here is pure: an object in, a list of problems out (the operator's configuration, such as the
image allow-list, is read once and passed in). The operator turns problems into a Degraded condition with
reason InvalidSpec and a Warning Event; it never raises on user input.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from agentscale.api.models import FIXED_PARTS, MAX_CHILD_NAME, MAX_WORKFLOW_NAME, AgentWorkflowSpec
from agentscale.api.placement import placement_problems

# The operator's image allow-list: comma-separated prefixes (docs/security.md). Unset or empty: any image.
ALLOWED_IMAGE_PREFIXES_ENV = "AGENTSCALE_ALLOWED_IMAGE_PREFIXES"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class InvalidSpec(Exception):
    """The spec cannot be acted on. ``problems`` name the field and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _loc(loc: tuple[int | str, ...]) -> str:
    if loc[-1:] == ("[key]",):  # a bad map key: name the map, the message quotes the key
        loc = loc[:-2]
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model at ``loc`` inside the spec (empty when ``loc`` is not a model)."""
    model: Any = AgentWorkflowSpec
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue  # a list index, or a map key: the model is the item's
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside ``X``, ``X | None``, ``list[X]`` or ``dict[str, X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, dict, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _message(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        if close:
            return f"{_loc(loc)}: unknown field; did you mean `{close[0]}`?"
        if known:
            return f"{_loc(loc)}: unknown field; the fields here are {', '.join(f'`{k}`' for k in known)}"
        return f"{_loc(loc)}: unknown field"
    return f"{_loc(loc)}: {error['msg']}"


def parse_spec(
    spec: Mapping[str, Any], *, name: str | None = None, allowed_images: Sequence[str] | None = None
) -> AgentWorkflowSpec:
    """Validate a raw spec into the typed model, or raise InvalidSpec naming each bad field and its fix.

    ``name``: the workflow's name, checked as the prefix of every child's name. ``allowed_images``: image
    prefixes every image must start with; None reads the operator's configuration
    (:func:`configured_image_prefixes`), empty allows any image.
    """
    problems = workflow_name_problems(name) if name is not None else []
    try:
        parsed = AgentWorkflowSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidSpec(problems + [_message(e) for e in exc.errors()]) from None
    problems += semantic_problems(parsed)
    prefixes = configured_image_prefixes() if allowed_images is None else tuple(allowed_images)
    problems += image_problems(parsed, prefixes)
    if problems:
        raise InvalidSpec(problems)
    return parsed


def workflow_name_problems(name: str) -> list[str]:
    """What stops ``name`` from prefixing every child's name (the CRD refuses these too; this catches objects
    stored before that rule existed)."""
    out = []
    if not _DNS_1035.match(name):
        mended = ("" if name[:1].isalpha() else "wf-") + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        out.append(
            f"metadata.name {name!r} cannot prefix the workflow's Service names (<name>-gateway, "
            f"<name>-<model>), which must be DNS-1035 labels: lowercase letters, digits and '-', starting "
            f"with a letter; recreate it as e.g. {mended!r}"
        )
    if len(name) > MAX_WORKFLOW_NAME:
        out.append(
            f"metadata.name is {len(name)} characters; at most {MAX_WORKFLOW_NAME} fit in its children's "
            f"names (<name>-{max(FIXED_PARTS, key=len)} must fit in {MAX_CHILD_NAME})"
        )
    return out


@functools.cache
def configured_image_prefixes() -> tuple[str, ...]:
    """The operator's image allow-list, read once from ``AGENTSCALE_ALLOWED_IMAGE_PREFIXES``."""
    return parse_image_prefixes(os.environ.get(ALLOWED_IMAGE_PREFIXES_ENV, ""))


def parse_image_prefixes(raw: str) -> tuple[str, ...]:
    """``"reg.example.com/team/, nvcr.io/nvidia/"`` -> the prefixes, blanks dropped."""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def image_allowed(image: str, prefixes: Sequence[str]) -> bool:
    """``image`` starts with one of ``prefixes`` at a boundary of its name: the prefix ends in '/', ':' or
    '@', or the image continues there with one of those, so ``reg.io/team`` admits ``reg.io/team/x:1`` and
    ``reg.io/team:1`` but not ``reg.io/team-evil/x``. An empty list admits every image."""
    if not prefixes:
        return True
    for p in prefixes:
        if image == p:
            return True
        if image.startswith(p) and (p[-1] in "/:@" or image[len(p)] in "/:@"):
            return True
    return False


def image_problems(spec: AgentWorkflowSpec, prefixes: Sequence[str]) -> list[str]:
    """Every image of the workflow the allow-list does not admit, with the list."""
    images = [(f"spec.steps[{s.name}].image", s.image) for s in spec.steps]
    images += [(f"spec.models[{m.name}].image", m.image) for m in spec.models]
    if spec.gateway.enabled:
        images.append(("spec.gateway.image", spec.gateway.image))
    allowed = ", ".join(prefixes)
    return [
        f"{where}: image {image!r} is not allowed by the operator's image policy; use an image starting "
        f"with one of: {allowed} ({ALLOWED_IMAGE_PREFIXES_ENV}, set by the cluster's administrator)"
        for where, image in images
        if not image_allowed(image, prefixes)
    ]


def find_cycle(edges: Mapping[str, list[str]]) -> list[str] | None:
    """Return one cycle in a directed graph as a closed path (a -> b -> a), or None. Iterative DFS."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    for root in edges:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            succ = edges.get(node, [])
            if i < len(succ):
                stack[-1] = (node, i + 1)
                nxt = succ[i]
                if nxt not in color:
                    continue
                if color[nxt] == grey:
                    return [*path[path.index(nxt) :], nxt]
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return None


def semantic_problems(spec: AgentWorkflowSpec) -> list[str]:
    """What CEL cannot (or may not, on an older API server) check. Each message names the field and fix."""
    problems: list[str] = []
    step_names = [s.name for s in spec.steps]
    model_names = [m.name for m in spec.models]
    for kind, names in (("steps", step_names), ("models", model_names)):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"spec.{kind}: duplicate names {', '.join(dupes)}; names must be unique")
    for s in spec.steps:
        if s.model and s.model not in model_names:
            problems.append(f"spec.steps[{s.name}].model: {s.model!r} is not in spec.models")
        for n in s.next:
            if n not in step_names:
                problems.append(f"spec.steps[{s.name}].next: {n!r} is not a step")
    clash = sorted(set(step_names) & set(model_names))
    if clash:
        problems.append(f"spec: {', '.join(clash)} named both a step and a model; rename one")
    problems.extend(_mirrored_cel_problems(spec))
    problems.extend(placement_problems(spec))
    cycle = find_cycle({s.name: list(s.next) for s in spec.steps})
    if cycle:
        problems.append(
            f"spec.steps[].next: cycle {' -> '.join(cycle)}; "
            "the steps must form a DAG, remove one of these links"
        )
    return problems


def _mirrored_cel_problems(spec: AgentWorkflowSpec) -> list[str]:
    """The CRD's CEL rules again, for objects stored before a rule existed or on servers without CEL."""
    out: list[str] = []
    q = spec.queue
    if (q.redisUrl is None) == (q.redisSecretRef is None):
        out.append("spec.queue: set exactly one of redisUrl or redisSecretRef")
    parts = [(f"spec.steps[{s.name}]", s.gpu, s.scaling) for s in spec.steps]
    parts += [(f"spec.models[{m.name}]", m.gpu, m.scaling) for m in spec.models]
    for where, gpu, sc in parts:
        if gpu is not None and gpu.count is not None and gpu.migProfile is not None:
            out.append(f"{where}.gpu: set either count (whole GPUs) or migProfile (one MIG slice), not both")
        if gpu is not None and gpu.count is None and gpu.migProfile is None:
            out.append(f"{where}.gpu: set count (whole GPUs) or migProfile (one MIG slice)")
        if sc.minReplicas > sc.maxReplicas:
            out.append(
                f"{where}.scaling: minReplicas ({sc.minReplicas}) must be <= maxReplicas ({sc.maxReplicas})"
            )
        elif sc.operator_owns_replicas() and not sc.minReplicas <= sc.replicas <= sc.maxReplicas:
            out.append(f"{where}.scaling.replicas ({sc.replicas}) must lie within [minReplicas, maxReplicas]")
    for m in spec.models:
        db = m.dynamicBatching
        if db is not None and m.maxBatchSize == 0:
            out.append(f"spec.models[{m.name}].dynamicBatching needs maxBatchSize > 0")
        if db is not None and any(b > m.maxBatchSize for b in db.preferredBatchSizes):
            out.append(
                f"spec.models[{m.name}].dynamicBatching.preferredBatchSizes must each be <= maxBatchSize"
            )
    return out
