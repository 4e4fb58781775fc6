# ruff: noqa: E501 - long prose strings and result tables
"""Write the data-plane section of docs/benchmarks.md (between the dataplane markers) from results/*.json,
with PNG plots under docs/img/."""

from __future__ import annotations

import json
from typing import Any

from .stack import RESULTS, ROOT

DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
BEGIN, END = "<!-- dataplane:begin -->", "<!-- dataplane:end -->"


def _load(name: str) -> dict[str, Any] | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _plot_batching(b: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("off", "batching off"), ("on", "batching on")):
        pts = b[key]
        ax.plot([p["rps"] for p in pts], [p["p95_ms"] for p in pts], "o-", label=label)
    ax.set_xlabel("throughput (runs/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title("gateway -> queue -> worker -> Triton (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(IMG / "dataplane-batching.png", dpi=100)
    return "img/dataplane-batching.png"


def section() -> str:
    out = [BEGIN, "## Data plane (gateway, queue, workers, Triton)", ""]
    b, lb, ov, gpu = _load("batching"), _load("balancing"), _load("overhead"), _load("gpu")
    machine = next((x["machine"] for x in (b, lb, ov) if x), "unknown")
    out += [
        f"Machine: {machine}. Everything (Locust or the load generator, gateway, worker, redis-server,",
        "tritonserver 2.51 from the nvidia-pytriton wheel, Python backend) shares these 2 cores.",
        "Reproduce: `python -m bench.dataplane.run` (about 5 minutes); raw numbers in",
        "`bench/dataplane/results/*.json`.",
        "",
    ]
    if b:
        out += ["### Dynamic batching on versus off (target: >= 3x throughput at equal p95)", ""]
        out += ["Locust (headless, FastHttpUser, closed loop) -> gateway `/v1/runs/sync` -> one-step workflow",
                "(encode -> query-encoder). on = Triton dynamic batching (16/32, 2 ms) + worker micro-batching",
                "(16, 2 ms); off = neither.", "",
                "| mode | users | runs/s | p50 ms | p95 ms | failures |", "|---|---|---|---|---|---|"]  # fmt: skip
        for key in ("off", "on"):
            for p in b[key]:
                out.append(
                    f"| {key} | {p['users']} | {p['rps']:.0f} | {p['p50_ms']:.0f} | {p['p95_ms']:.0f} | {p['failures']} |"
                )
        d_on, d_off = b["direct_on"], b["direct_off"]
        out += [
            "",
            f"Throughput at p95 <= {b['p95_bound_ms']:.0f} ms: **{b['ratio']:.2f}x** (target 3x: **missed**)."
            if b["ratio"] < 3
            else f"Throughput at equal p95: **{b['ratio']:.2f}x** (target 3x: met).",
            "",
            f"Same Triton, 16 clients sending single samples straight to it (no gateway): off "
            f"{d_off['rps']:.0f}/s (p95 {d_off['p95_ms']:.1f} ms), on {d_on['rps']:.0f}/s "
            f"(p95 {d_on['p95_ms']:.1f} ms): **{b['direct_ratio']:.2f}x**.",
            "",
            "Why the end-to-end target is missed here: on 2 shared cores the per-run CPU cost of the Python path",
            "(Locust, HTTP, gateway, two Redis round trips per step, the worker) is larger than the model's",
            "per-request cost, so the pipeline saturates at the same ~700-800 runs/s with or without batching;",
            "the example models are tiny and a CPU runs batch 1 almost as efficiently as batch 32. Batching",
            "pays where the model dominates (a GPU, see FACTS.md: 10.5x for direct clients).",
            "",
            f"![batching]({_plot_batching(b)})",
            "",
        ]
    if lb:
        rr, lo, p2 = lb["round-robin"], lb["least-outstanding"], lb["power-of-two"]
        out += [
            "### Least-outstanding versus round robin, replicas of unequal speed (target: p95 >= 30% lower)",
            "",
            f"Two real tritonservers serving `ranker`; the slow one runs each forward pass {lb['slow_repeat']}x",
            f"(real compute). The runtime's Triton client, {lb['concurrency']} concurrent callers, closed loop,",
            f"{lb['duration_s']} s each.",
            "",
            "| strategy | req/s | p50 ms | p95 ms | p99 ms | share to slow |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in (("round-robin", rr), ("least-outstanding", lo), ("power-of-two", p2)):
            out.append(
                f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['slow_share']:.0%} |"
            )
        red = lb["p95_reduction"]
        out += [
            "",
            f"p95 {red:.0%} lower with least-outstanding (target 30%: **{'met' if red >= 0.3 else 'missed'}**);"
            f" p50 {1 - lo['p50_ms'] / rr['p50_ms']:.0%} lower and {lo['rps'] / rr['rps']:.2f}x throughput.",
            "The p95 stays high because least-outstanding still sends ~15% of requests (ties at equal counts) to",
            "the slow replica, and p95 falls among those. In a closed loop it also completes ~2x more requests,",
            "so it runs at a higher load than round robin. An open-loop comparison at equal offered load, and",
            "latency-aware weights (EWMA of service time), are the next steps.",
            "",
        ]
    if ov:
        d, g = ov["direct"], ov["gateway"]
        out += [
            "### Gateway + queue overhead (moderate load)",
            "",
            f"{ov['concurrency']} concurrent callers, closed loop. Direct: the runtime's Triton client ->",
            "query-encoder. Through the stack: HTTP -> gateway -> Redis Stream -> worker -> Triton -> results",
            "stream -> HTTP.",
            "",
            "| path | req/s | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|",
            f"| Triton direct | {d['rps']:.0f} | {d['p50_ms']:.2f} | {d['p95_ms']:.2f} | {d['p99_ms']:.2f} |",
            f"| gateway + queue + worker | {g['rps']:.0f} | {g['p50_ms']:.2f} | {g['p95_ms']:.2f} | {g['p99_ms']:.2f} |",
            "",
            f"Overhead per request: **p50 {ov['overhead_p50_ms']:.2f} ms, p95 {ov['overhead_p95_ms']:.2f} ms**.",
            "",
        ]
    out += ["### Triton versus raw torch on a GPU (target: >= 0.8 of the limit)", ""]
    if gpu:
        out += [f"{gpu['gpu']}: Triton {gpu['triton_samples_s']:.0f} samples/s, torch limit "
                f"{gpu['torch_limit_samples_s']:.0f}: **{gpu['ratio']:.2f}x**.", ""]  # fmt: skip
    else:
        out += [
            "**Not run**: this machine has no GPU. `bench/dataplane/bench_gpu.py` runs it where one exists",
            "(fp16 MLP 64 -> 16 x 8192 -> 16, Triton dynamic batching 512/1024 versus the same torch model at",
            "batch 1024) and records the GPU model. For reference, shared/FACTS.md measured 0.86x on an H100",
            "with the same wheel and a model of this shape.",
            "",
        ]
    out.append(END)
    return "\n".join(out)


def main() -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    sec = section()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + sec + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + sec + "\n"
    DOC.write_text(text)
    print(f"wrote the dataplane section of {DOC}")


if __name__ == "__main__":
    main()
