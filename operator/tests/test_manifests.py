"""Rendered YAML reads back as written under YAML 1.2 rules (what kubectl and the API server use)."""

from __future__ import annotations

import pytest
import yaml
from agentscale.manifests import dump_all


@pytest.mark.parametrize(
    "value", ["1234e5678", "0123", "1_000", "0o17", "0x1F", ".5", "1e3", "true", "no", "~", ""]
)
def test_strings_that_look_like_other_types_are_quoted(value: str) -> None:
    text = dump_all([{"metadata": {"annotations": {"agentscale.io/spec-hash": value}}}])
    assert f"'{value}'" in text, text
    assert yaml.safe_load(text)["metadata"]["annotations"]["agentscale.io/spec-hash"] == value


def test_plain_strings_and_numbers_are_left_alone() -> None:
    text = dump_all([{"image": "agentscale/worker:0.1.0", "replicas": 2, "port": "http"}])
    assert "image: agentscale/worker:0.1.0" in text and "replicas: 2" in text and "port: http" in text
