"""Which nodes the workflow's pods may run on: ``placement`` (nodeSelector and tolerations).

``spec.placement`` applies to every pod the workflow renders; the same field on a step, a model server or
the gateway refines it for that part's pods. The merge (:func:`merge`) is the one rule, read by the renderer
(``render/pods.py``) and documented in docs/architecture.md ("Placement"):

- nodeSelector: the workflow's entries, then the part's; a key both set takes the part's value.
- tolerations: the workflow's, then the part's, exact duplicates dropped (the first kept).

GPU pods keep what the renderer adds for their GPU (the ``nvidia.com/gpu.product`` selector for
``gpu.product`` and the toleration of the ``nvidia.com/gpu`` taint), merged with the above. A merged
nodeSelector that names a different ``nvidia.com/gpu.product`` than the part's ``gpu.product`` is refused
(:func:`placement_problems`, reported as InvalidSpec): such a pod could only run on a node that contradicts
its own GPU request. The same product in both places is fine, and so is the label alone (no gpu.product).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from agentscale.api.base import Advice, Model, cel, cel_string

if TYPE_CHECKING:
    from agentscale.api.models import AgentWorkflowSpec

PRODUCT_LABEL = "nvidia.com/gpu.product"

# A label key as Kubernetes checks it (a "qualified name"): an optional DNS-1123 subdomain prefix of at most
# 253 characters and '/', then a name of 1-63 letters, digits, '-', '_' and '.', starting and ending with a
# letter or digit. Two patterns: the form, and the lengths of its two parts.
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_KEY_LENGTHS = r"^([^/]{1,253}/)?[^/]{1,63}$"
LABEL_KEY_MAX_LENGTH = 253 + 1 + 63
LABEL_KEY_ADVICE = (
    "must be a label key: an optional DNS subdomain prefix and '/', then a name of letters, digits, '-', "
    "'_' and '.' starting and ending with a letter or digit, e.g. agentscale.io/pool or "
    "node.kubernetes.io/instance-type"
)
LABEL_KEY_LENGTHS_ADVICE = (
    "must be a label key whose name (after any '/') is 1-63 characters, prefix at most 253"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_VALUE_ADVICE = (
    "must be a label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter "
    "or digit (or empty)"
)
MAX_NODE_SELECTOR = 32
MAX_TOLERATIONS = 32
MAX_TOLERATION_SECONDS = 31_536_000  # a year


def _label_value_example(value: str) -> str:
    return re.sub(r"[^-A-Za-z0-9_.]+", "-", value).strip("-_.")[:63].strip("-_.")


_KEY_ADVICE = (Advice(LABEL_KEY, LABEL_KEY_ADVICE), Advice(LABEL_KEY_LENGTHS, LABEL_KEY_LENGTHS_ADVICE))
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX_LENGTH), *_KEY_ADVICE]
LabelValue = Annotated[
    str, StringConstraints(max_length=63), Advice(LABEL_VALUE, LABEL_VALUE_ADVICE, _label_value_example)
]


def _selector_key(key: str) -> str:
    if len(key) > LABEL_KEY_MAX_LENGTH:
        raise PydanticCustomError(
            "advice", "{key}: {advice}", {"key": repr(key[:80]), "advice": LABEL_KEY_ADVICE}
        )
    for advice in _KEY_ADVICE:
        advice.check(key)
    return key


# A nodeSelector key: checked by pydantic through a validator that leaves the JSON schema a plain string (the
# CRD cannot put a schema on map keys); this CEL rule on the map checks them in the API server instead.
_SelectorKey = Annotated[str, AfterValidator(_selector_key)]
_NODE_SELECTOR_KEYS_RULE = cel(
    f"self.all(k, k.matches({cel_string(LABEL_KEY)}) && k.matches({cel_string(LABEL_KEY_LENGTHS)}))",
    f"nodeSelector: every key {LABEL_KEY_ADVICE}; the name after any '/' at most 63 characters",
)


class TolerationOperator(StrEnum):
    Exists = "Exists"
    Equal = "Equal"


class TaintEffect(StrEnum):
    NoSchedule = "NoSchedule"
    PreferNoSchedule = "PreferNoSchedule"
    NoExecute = "NoExecute"


_EMPTY_KEY = "an empty key needs operator Exists (it then tolerates every taint); set key or operator Exists"
_EXISTS_VALUE = "operator Exists takes no value; remove value or use operator Equal"
_SECONDS_EFFECT = "tolerationSeconds applies to effect NoExecute only; set effect NoExecute or remove it"


class Toleration(Model):
    """A Kubernetes Toleration: the pods may run on nodes with a matching taint."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.key) && self.key != '') || self.operator == 'Exists'",
                    f"toleration: {_EMPTY_KEY}",
                ),
                cel(
                    "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                    f"toleration: {_EXISTS_VALUE}",
                ),
                cel(
                    "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                    f"toleration: {_SECONDS_EFFECT}",
                ),
            ]
        }
    )

    key: LabelKey | None = Field(
        None,
        description="The taint key to tolerate, e.g. nvidia.com/gpu. Unset with operator Exists: any taint.",
    )
    operator: TolerationOperator = Field(
        TolerationOperator.Equal,
        description="Equal: the taint's value must equal `value`. Exists: any value (leave `value` empty).",
    )
    value: LabelValue | None = Field(None, description="The taint value to match (operator Equal).")
    effect: TaintEffect | None = Field(
        None,
        description="The taint effect to tolerate: NoSchedule, PreferNoSchedule or NoExecute. Empty: all.",
    )
    tolerationSeconds: int | None = Field(
        None,
        ge=0,
        le=MAX_TOLERATION_SECONDS,
        description=(
            "Effect NoExecute only: how long a pod stays on a node after the taint appears. Unset: forever."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        # The CRD's CEL rules again, for objects stored before they existed or validated outside the cluster.
        if not self.key and self.operator != TolerationOperator.Exists:
            raise PydanticCustomError("toleration", _EMPTY_KEY)
        if self.operator == TolerationOperator.Exists and self.value:
            raise PydanticCustomError("toleration", _EXISTS_VALUE)
        if self.tolerationSeconds is not None and self.effect != TaintEffect.NoExecute:
            raise PydanticCustomError("toleration", _SECONDS_EFFECT)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The Toleration as a pod spec carries it (unset fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


class Placement(Model):
    """Nodes the pods may run on. On spec: every pod of the workflow. On a step, model or the gateway: merged
    over the workflow's (its nodeSelector keys win; tolerations are the union)."""

    nodeSelector: dict[_SelectorKey, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_NODE_SELECTOR,
        description=(
            "Node labels the pods require, e.g. {agentscale.io/pool: inference}. A key the part and the "
            "workflow both set takes the part's value. A GPU part's gpu.product is added as "
            "nvidia.com/gpu.product; naming a different product here is refused."
        ),
        json_schema_extra={"x-kubernetes-validations": [_NODE_SELECTOR_KEYS_RULE]},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_TOLERATIONS,
        description=(
            "Taints the pods tolerate (Kubernetes Tolerations), added to the workflow's and, on GPU pods, to "
            "the toleration of the nvidia.com/gpu taint; duplicates are dropped."
        ),
    )


def merge(*layers: Placement | None) -> Placement:
    """The placement of one pod: ``layers`` from the widest (the workflow's) to the narrowest (the part's).
    nodeSelector keys of a later layer win; tolerations are the union in order, exact duplicates dropped."""
    selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    for layer in layers:
        if layer is None:
            continue
        selector.update(layer.nodeSelector)
        for t in layer.tolerations:
            if t not in tolerations:
                tolerations.append(t)
    return Placement(nodeSelector=selector, tolerations=tolerations)


def dedupe(tolerations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tolerations in order, exact duplicates dropped (the first kept)."""
    out: list[dict[str, Any]] = []
    for t in tolerations:
        if t not in out:
            out.append(t)
    return out


def placement_problems(spec: AgentWorkflowSpec) -> list[str]:
    """Each step or model whose merged nodeSelector names another GPU product than its ``gpu.product``."""
    parts = [(f"spec.steps[{s.name}]", s.gpu, s.placement) for s in spec.steps]
    parts += [(f"spec.models[{m.name}]", m.gpu, m.placement) for m in spec.models]
    out = []
    for where, gpu, own in parts:
        product = gpu.product if gpu is not None else None
        selected = merge(spec.placement, own).nodeSelector.get(PRODUCT_LABEL)
        if product is None or selected is None or selected == product:
            continue
        origin = (
            f"{where}.placement"
            if own is not None and PRODUCT_LABEL in own.nodeSelector
            else "spec.placement"
        )
        out.append(
            f"{where}: gpu.product {product!r} and {origin}.nodeSelector[{PRODUCT_LABEL}] {selected!r} "
            "ask for different GPUs, and no node has both; remove one of them or make them equal"
        )
    return out
