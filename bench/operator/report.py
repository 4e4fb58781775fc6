"""The operator benchmark's report: the machine, a plot and the operator section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img" / "operator-scale.png"
BEGIN, END = "<!-- operator:begin -->", "<!-- operator:end -->"


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} vCPU ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(
        ns, [r["floor_s"] for r in rows], "o-", label="floor: kubectl apply --server-side of the children"
    )
    ax.plot(ns, [r["operator_s"] for r in rows], "s-", label="operator: AgentWorkflows until all Ready")
    for r in rows:
        ax.annotate(
            f"{r['ratio']:.2f}x", (r["n"], r["operator_s"]), textcoords="offset points", xytext=(4, 6)
        )
    ax.set_xlabel("three-step workflows (N)")
    ax.set_ylabel("seconds until every one is ready")
    ax.set_title("Operator vs API-server floor (local kwok cluster, 2 vCPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    IMG.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(IMG, dpi=120)


def report(rows: list[dict[str, Any]], info: str) -> None:
    lines = [
        BEGIN,
        "## Operator at scale: N workflows versus the API server's own floor",
        "",
        f"Machine: {info}. Local cluster from `e2e/cluster/` (kube-apiserver, etcd, controller-manager, "
        "scheduler and kwok as local processes on the same 2 vCPU). "
        "Run: `.venv/bin/python bench/operator/scale.py`.",
        "",
        "Floor = `kubectl apply --server-side` of exactly the children the operator renders, until every "
        "Deployment has its replica ready. Operator = `kubectl apply` of the AgentWorkflows, until every one "
        "reports Ready. "
        "Target: ratio <= 1.5 at N = 1000, zero idle writes.",
        "",
        "| N | objects | floor (s) | operator (s) | ratio | operator peak RSS (MiB) | operator CPU (s) "
        "| writes floor / operator | writes in idle minute |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['objects']} | {r['floor_s']} | {r['operator_s']} | **{r['ratio']:.2f}** "
            f"| {r['operator_peak_rss_mib']} | {r['operator_cpu_s']} "
            f"| {r['floor_writes']} / {r['operator_writes']} "
            f"| {r['idle_writes']} |"
        )
    lines += [
        "",
        "![operator scale](img/operator-scale.png)",
        "",
        "Operator writes by resource (during the run): "
        + "; ".join(f"N={r['n']}: {r['operator_writes_by_resource']}" for r in rows),
        "",
        END,
    ]
    section = "\n".join(lines)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
