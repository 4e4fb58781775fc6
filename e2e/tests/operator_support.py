"""Shared pieces of the operator e2e tests (a plain module, so tests can import it)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "workloads" / "examples"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}


def write_requests(metrics_text: str, resources: set[str]) -> int:
    """Sum apiserver_request_total over write verbs for the given resources."""
    total = 0
    for line in metrics_text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_part, _, value = line.rpartition(" ")
        labels = dict(
            kv.split("=", 1)
            for kv in labels_part[len("apiserver_request_total{") : -1].split(",")
            if "=" in kv
        )
        verb = labels.get("verb", "").strip('"')
        resource = labels.get("resource", "").strip('"')
        if verb in WRITE_VERBS and resource in resources:
            total += int(float(value))
    return total
