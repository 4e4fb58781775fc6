"""Generate the AgentWorkflow CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema. The conversion
inlines ``$ref``, turns ``Optional[X]`` into an optional ``X``, drops titles and ``additionalProperties:
false``, maps ``exclusiveMinimum`` to the OpenAPI 3.0 form, and writes object/list defaults so the API
server fills nested defaults (and CEL rules can rely on them).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from agentscale.api import models as m
from agentscale.api.base import cel, cel_string

_INT_OR_STRING_KEYS = (
    "x-kubernetes-int-or-string",
    "description",
    "default",
    "pattern",
    "maxLength",
    "minimum",
    "x-kubernetes-validations",
)


def _resolve(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_resolve(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[-1]
        target = copy.deepcopy(defs[ref])
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        target.update(siblings)
        return _resolve(target, defs)
    return {k: _resolve(v, defs) for k, v in schema.items()}


def _structural(schema: Any) -> Any:
    """Rewrite one resolved pydantic schema node into a structural OpenAPI v3 schema node."""
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = dict(schema)
    s.pop("title", None)

    # Optional[X] -> X (the field is simply optional; null is not a value users should write).
    if "anyOf" in s:
        options = [o for o in s["anyOf"] if o.get("type") != "null"]
        if s.get("x-kubernetes-int-or-string"):
            s.pop("anyOf")
        elif len(options) == 1:
            s.pop("anyOf")
            merged = dict(options[0])
            merged.update(s)
            s = merged
            if s.get("default", "") is None:
                s.pop("default")
            return _structural(s)
    if s.get("x-kubernetes-int-or-string"):
        # The API server applies pattern and maxLength to the string form only, minimum to the integer form;
        # CEL rules see either (the quantity rule checks both forms).
        return {k: v for k, v in s.items() if k in _INT_OR_STRING_KEYS}
    if s.get("x-kubernetes-preserve-unknown-fields"):
        s.pop("additionalProperties", None)
        s["type"] = "object"
        return s
    if s.get("default", "") is None:
        s.pop("default")
    if s.get("additionalProperties") is False or s.get("additionalProperties") is True:
        s.pop("additionalProperties")
    if "exclusiveMinimum" in s and not isinstance(s["exclusiveMinimum"], bool):
        s["minimum"] = s.pop("exclusiveMinimum")
        s["exclusiveMinimum"] = True
    if "enum" in s and "type" not in s:
        s["type"] = "string"
    if "properties" in s:
        s["type"] = "object"
        s["properties"] = {k: _structural(v) for k, v in s["properties"].items()}
    if "items" in s:
        s["items"] = _structural(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _structural(s["additionalProperties"])
    return s


def _add_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Write defaults that pydantic leaves out (default_factory), recursively through nested models."""
    props = schema.get("properties", {})
    for name, field in model.model_fields.items():
        prop = props.get(name)
        if prop is None:
            continue
        if field.default_factory is not None and "default" not in prop:
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                prop["default"] = value.model_dump(mode="json", exclude_none=True)
            elif isinstance(value, list):
                prop["default"] = [
                    v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v
                    for v in value
                ]
            else:
                prop["default"] = value
        for sub in _nested_models(field.annotation):
            target = prop.get("items", prop) if prop.get("type") == "array" else prop
            if "additionalProperties" in target and isinstance(target["additionalProperties"], dict):
                target = target["additionalProperties"]
            _add_defaults(sub, target)


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_nested_models(arg))
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(mode="validation")
    defs = raw.pop("$defs", {})
    resolved = _resolve(raw, defs)
    schema: dict[str, Any] = _structural(resolved)
    _add_defaults(model, schema)
    return schema


# A workflow's name prefixes every child's name, and Services (<name>-gateway, <name>-<model>) need DNS-1035
# labels: lowercase letters, digits and '-', starting with a letter. metadata.name alone allows dots and a
# leading digit (a DNS-1123 subdomain), so without this rule `with.dot` is stored and fails half-applied.
DNS_1035 = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


def _root_rules() -> list[dict[str, str]]:
    longest = max(m.FIXED_PARTS, key=len)
    return [
        cel(
            f"self.metadata.name.matches({cel_string(DNS_1035)})",
            "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a "
            "letter; no '.'), because it prefixes the names of the workflow's Services "
            "(<name>-gateway, <name>-<model>); e.g. my-flow rather than my.flow",
            reason="FieldValueInvalid",
            message_expression=(
                "\"metadata.name '\" + self.metadata.name + \"' cannot prefix the workflow's Service names "
                "(<name>-gateway, <name>-<model>), which must be DNS-1035 labels: lowercase letters, digits "
                "and '-', starting with a letter; use e.g. '\" + "
                "(self.metadata.name.matches('^[a-z]') ? '' : 'wf-') + "
                "self.metadata.name.replace('.', '-') + \"'\""
            ),
        ),
        cel(
            f"size(self.metadata.name) <= {m.MAX_WORKFLOW_NAME}",
            f"metadata.name must be at most {m.MAX_WORKFLOW_NAME} characters: it prefixes child names, "
            f"the longest <name>-{longest}, which must fit in 63",
            reason="FieldValueInvalid",
        ),
        cel(
            "self.spec.steps.all(s, size(self.metadata.name) + size(s.name) < 63) && "
            "self.spec.models.all(x, size(self.metadata.name) + size(x.name) < 63)",
            "<workflow name>-<step or model name> must be at most 63 characters (a Service/label value); "
            "shorten the workflow, step or model name",
            reason="FieldValueInvalid",
        ),
    ]


PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Steps", "type": "string", "jsonPath": ".status.stepsReady"},
    {"name": "Models", "type": "string", "jsonPath": ".status.modelsReady"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    spec_schema = openapi_schema(m.AgentWorkflowSpec)
    status_schema = openapi_schema(m.AgentWorkflowStatus)
    conditions = status_schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"]["required"] = ["type", "status"]
    root = {
        "type": "object",
        "description": (m.AgentWorkflow.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "agentscale.io/v1alpha1"},
            "kind": {"type": "string", "description": "AgentWorkflow"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": _root_rules(),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{m.PLURAL}.{m.GROUP}",
            "labels": {"app.kubernetes.io/name": "agentscale", "app.kubernetes.io/part-of": "agentscale"},
        },
        "spec": {
            "group": m.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": m.KIND,
                "listKind": f"{m.KIND}List",
                "plural": m.PLURAL,
                "singular": m.SINGULAR,
                "shortNames": m.SHORT_NAMES,
                "categories": ["agentscale"],
            },
            "versions": [
                {
                    "name": m.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `agentscale crd` from operator/agentscale/api/models.py. Do not edit by hand.\n"


def render_crd_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
