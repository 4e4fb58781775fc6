"""The operator benchmark at one size, on an earlier commit and on this tree, in the same run.

A refactoring must not make the operator slower. This runs ``bench/operator/scale.py`` at one N for a
baseline commit (checked out in a temporary git worktree, imported through PYTHONPATH so the same virtual
environment serves both) and for the working tree, alternating them for ``--rounds`` rounds so drift in the
machine's load hits both alike, then writes the rows and the ratio of medians:

    .venv/bin/python bench/operator/before_after.py --ref 869897f --n 500 --rounds 2

Results: ``bench/operator/results/before-after.json`` and the "refactor check" part of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "operator" / "results" / "before-after.json"
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- operator-before-after:begin -->", "<!-- operator-before-after:end -->"
METRICS = ("operator_s", "ratio", "operator_cpu_s", "operator_peak_rss_mib", "operator_writes", "idle_writes")


def run_scale(tree: Path, n: int, out: Path) -> dict[str, Any]:
    """One scale.py run of ``tree``'s operator; the row it prints for N."""
    env = {**os.environ, "PYTHONPATH": str(tree / "operator")}
    cmd = [sys.executable, str(tree / "bench" / "operator" / "scale.py"), "--sizes", str(n), "--no-report"]
    if tree == REPO:
        cmd += ["--results", str(out)]  # the baseline's scale.py writes into its own worktree
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        raise RuntimeError(f"scale.py in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(rows[-1])


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {m: round(statistics.median(r[m] for r in rows), 3) for m in METRICS}


def report(data: dict[str, Any]) -> None:
    b, a = data["baseline"]["median"], data["current"]["median"]
    lines = [
        BEGIN,
        f"### Refactor check: N={data['n']}, commit `{data['ref']}` versus `{data['head']}`, same run",
        "",
        f"Machine: {data['machine']}. Run: `.venv/bin/python bench/operator/before_after.py "
        f"--ref {data['ref']} --n {data['n']} --rounds {data['rounds']}` (alternating, medians of "
        f"{data['rounds']} each; raw rows in `bench/operator/results/before-after.json`).",
        "",
        "| metric | baseline | this tree | this / baseline |",
        "|---|---|---|---|",
    ]
    for m in METRICS:
        ratio = f"{a[m] / b[m]:.2f}" if b[m] else "-"
        lines.append(f"| {m} | {b[m]} | {a[m]} | {ratio} |")
    lines += ["", END]
    section = "\n".join(lines)
    text = DOC.read_text()
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.replace("<!-- operator:end -->", "<!-- operator:end -->\n\n" + section, 1)
    DOC.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="the baseline commit")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "bench" / "operator"))
    from report import machine

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    ref = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=REPO, capture_output=True, text=True)
    data: dict[str, Any] = {
        "n": args.n,
        "rounds": args.rounds,
        "ref": ref.stdout.strip(),
        "head": head.stdout.strip() + ("+changes" if _dirty() else ""),
        "machine": machine(),
        "baseline": {"rows": []},
        "current": {"rows": []},
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.ref], cwd=REPO, check=True)
        try:
            for i in range(args.rounds):
                for name, tree in (("baseline", base), ("current", REPO)):
                    row = run_scale(tree, args.n, Path(tmp) / "current.json")
                    data[name]["rows"].append(row)
                    print(f"round {i + 1} {name}: " + json.dumps({m: row[m] for m in METRICS}), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)
    for name in ("baseline", "current"):
        data[name]["median"] = summary(data[name]["rows"])
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: data[k]["median"] for k in ("baseline", "current")}, indent=2))
    if not args.no_report:
        report(data)
    return 0


def _dirty() -> bool:
    proc = subprocess.run(["git", "status", "--porcelain", "--", "operator"], cwd=REPO, capture_output=True)
    return bool(proc.stdout.strip())


if __name__ == "__main__":
    raise SystemExit(main())
