"""Building blocks of the API models: the strict base model, CEL rules, and checks that read as advice.

A check written once here reaches both places that enforce it: the pydantic validator (the operator and
``agentscale validate``) raises the advice as its message, and the same advice is the ``message`` of the
CEL rule the CRD carries, so the API server refuses with it at apply time. Neither says "should match
pattern '^...$'".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


class Model(BaseModel):
    """Every spec model: unknown keys are refused (``validation.parse_spec`` suggests the field meant)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", use_attribute_docstrings=False)


def cel(
    rule: str,
    message: str,
    field_path: str | None = None,
    reason: str | None = None,
    message_expression: str | None = None,
) -> dict[str, Any]:
    """One CEL validation rule as the CRD wants it."""
    out: dict[str, Any] = {"rule": rule, "message": message}
    if message_expression:
        out["messageExpression"] = message_expression
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def cel_string(value: str) -> str:
    """A CEL string literal (single-quoted; backslashes and quotes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Advice:
    """``Annotated[str, Advice(pattern, advice)]``: the string must match ``pattern`` (with ``forbid``: must
    not); otherwise it is refused with ``advice`` (plus "e.g. '<mended>'" when ``example`` can mend the value)
    by pydantic, and with the same advice by the CRD's CEL rule on the field (which replaces a JSON-schema
    ``pattern``). Patterns keep to what both Python's ``re`` and CEL's RE2 read alike."""

    pattern: str
    advice: str
    example: Callable[[str], str] | None = None
    forbid: bool = False
    echo: bool = True  # quote the refused value (False for values that may hold a secret)

    def ok(self, value: str) -> bool:
        return (
            (re.search(self.pattern, value) is None) if self.forbid else bool(re.search(self.pattern, value))
        )

    def check(self, value: str) -> str:
        if self.ok(value):
            return value
        hint = ""
        if self.example is not None:
            mended = self.example(value)
            if mended and mended != value and self.ok(mended):
                hint = f" (e.g. {mended!r})"
        raise PydanticCustomError(
            "advice",
            "{value}{advice}{hint}",
            {"value": f"{value[:80]!r}: " if self.echo else "", "advice": self.advice, "hint": hint},
        )

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        matches = f"self.matches({cel_string(self.pattern)})"
        rule = cel(f"!{matches}" if self.forbid else matches, self.advice)
        out.setdefault("x-kubernetes-validations", []).append(rule)
        return out


def dns_label_example(value: str) -> str:
    """A DNS-1123 label close to ``value``: lowercased, other characters as '-', trimmed to 63."""
    return re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:63].strip("-")
