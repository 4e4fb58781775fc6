"""Shared pieces of the operator e2e tests (a plain module, so tests can import it)."""

from __future__ import annotations

from pathlib import Path

from agentscale import kinds
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "workloads" / "examples"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}
OWNED_KINDS = ",".join(k.plural for k in kinds.OWNED)  # for `kubectl get`
WRITTEN = {k.plural for k in kinds.WRITTEN}  # what an idle operator must not write


def write_requests(metrics_text: str, resources: set[str]) -> int:
    """Sum apiserver_request_total over write verbs for the given resources."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "apiserver_request":  # the parser drops the counter's _total suffix
            continue
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            if sample.labels.get("verb") in WRITE_VERBS and sample.labels.get("resource") in resources:
                total += sample.value
    return int(total)
