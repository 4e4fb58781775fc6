"""Write the data-plane section of docs/benchmarks.md (between the dataplane markers) from results/*.json,
with PNG plots under docs/img/."""

# ruff: noqa: E501 - long prose strings and result tables

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


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    return plt


def _plot_batching(b: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, m in b["modes"].items():
        pts = m["points"]
        ax.plot([p["rps"] for p in pts], [p["p95_ms"] for p in pts], "o-", label=name)
    ax.axhline(b["p95_bound_ms"], color="grey", ls="--", lw=1, label=f"p95 bound {b['p95_bound_ms']:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (runs/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title(f"Locust -> gateway -> worker -> Triton {b['model']} (CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "dataplane-batching.png", dpi=100)
    return "img/dataplane-batching.png"


def _plot_balancing(lb: dict[str, Any]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, setup in zip(axes, ("sim", "triton"), strict=True):
        rows = lb[setup]
        for s in lb["strategies"]:
            ax.plot([r["offered_rps"] for r in rows], [r[s]["p95_ms"] for r in rows], "o-", label=s)
        ax.set_yscale("log")
        ax.set_xlabel("offered load (req/s, Poisson)")
        ax.set_ylabel("p95 latency (ms)")
        ax.set_title(f"{setup}: one replica {lb['slow_factor']}x slower")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "dataplane-balancing.png", dpi=100)
    return "img/dataplane-balancing.png"


def section() -> str:
    out = [BEGIN, "## Data plane (gateway, queue, workers, Triton)", ""]
    b, lb, ov, gpu = _load("batching"), _load("balancing"), _load("overhead"), _load("gpu")
    machine = next((x["machine"] for x in (b, lb, ov) if x), "unknown")
    out += [
        f"Machine: {machine}. Everything (Locust or the load generator, gateway, worker, redis-server,",
        "tritonserver 2.51 from the nvidia-pytriton wheel, Python backend) shares these 2 cores.",
        "Reproduce: `python -m bench.dataplane.run` (about 15 minutes); raw numbers in",
        "`bench/dataplane/results/*.json`.",
        "",
    ]
    if b:
        bound = b["p95_bound_ms"]
        out += ["### Dynamic batching on versus off (target: >= 3x throughput at equal p95)", ""]
        out += [
            "Locust (headless, FastHttpUser, closed loop, users swept) -> gateway `/v1/runs/sync` -> one-step",
            f"workflow (encode -> `{b['model']}`: token embeddings -> 1024 -> 4096 -> 4096 -> 1024, 25M float32",
            "weights, numpy; ~5 ms per single sample on one core, batch 32 ~30 ms). One Triton instance,",
            f"BLAS pinned to one thread ({', '.join(f'{k}={v}' for k, v in b['blas_threads'].items())}).",
            "off = no `dynamic_batching` block; on = `dynamic_batching` (preferred 16/32, 2 ms queue delay);",
            "the configs differ in nothing else. Worker micro-batching: off in `off` and `on` (every run is its",
            "own gRPC request, only Triton batches); `on+client` adds the worker's micro-batching (16, 2 ms).",
            "",
            "| mode | users | runs/s | p50 ms | p95 ms | p99 ms | failures |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, m in b["modes"].items():
            for p in m["points"]:
                out.append(
                    f"| {name} | {p['users']} | {p['rps']:.0f} | {p['p50_ms']:.0f} | {p['p95_ms']:.0f} | {p['p99_ms']:.0f} | {p['failures']} |"
                )
        out += ["", "Highest throughput whose p95 stays under the bound (runs/s; ratio to off):", "",
                "| p95 bound | " + " | ".join(b["modes"]) + " |", "|---|" + "---|" * len(b["modes"])]  # fmt: skip
        for bb in b["p95_bounds_ms"]:
            cells = [
                f"{b['throughput_at_bound'][n][str(bb)]:.0f} ({b['ratio'][n][str(bb)]:.2f}x)"
                for n in b["modes"]
            ]
            out.append(f"| {bb:.0f} ms | " + " | ".join(cells) + " |")
        on = b["ratio"]["on"][str(bound)]
        both = b["ratio"]["on+client"][str(bound)]

        def verdict(x: float) -> str:
            return "met" if x >= 3 else "missed"

        out += [
            "",
            f"At the headline bound, p95 <= {bound:.0f} ms: Triton dynamic batching alone (the configs differ only",
            f"in `dynamic_batching`) **{on:.2f}x** (target 3x: **{verdict(on)}**); with the worker's micro-batching",
            f"as well **{both:.2f}x** (**{verdict(both)}**; that mode also changes a worker setting).",
            "",
            "Same Triton, driven directly (no gateway) by the runtime's client sending single samples:",
            "",
            "| mode | 1 client samples/s | 16 clients samples/s | 16 clients p95 ms | ratio to off (16) |",
            "|---|---|---|---|---|",
        ]
        for name, m in b["modes"].items():
            d1, d16 = m["direct"]["1"], m["direct"]["16"]
            out.append(
                f"| {name} | {d1['rps']:.0f} | {d16['rps']:.0f} | {d16['p95_ms']:.1f} | {b['direct_ratio'][name]:.2f}x |"
            )
        out += [
            "",
            "Reading it: one sample of this model is a matrix-vector product per layer, bound by reading 100 MB",
            "of weights; a batch reads them once, so the instance's throughput grows about 5x from batch 1 to",
            "batch 16-32 (numpy/OpenBLAS, one thread). End to end, every run also costs a few ms of CPU in the",
            "Python path (Locust, gateway, two Redis round trips, the worker, gRPC), on the same 2 cores, so the",
            "gain is smaller than the model's and needs enough concurrent runs for Triton to form batches; at",
            "light load (1-4 users) batching does not help and costs the queue delay. The worker's micro-batching",
            "sends one gRPC request per 16 samples instead of 16, saving per-request CPU in the worker and in",
            "Triton; that is why `on+client` does better. Earlier runs of this benchmark compared against an",
            "`off` that still batched: `model.py`'s auto-complete added `dynamic_batching` to every config; it",
            "now leaves a config that states `max_batch_size` as written.",
            "",
            f"![batching]({_plot_batching(b)})",
            "",
        ]
    if lb:
        out += [
            "### Load balancing across replicas of unequal speed (target: p95 >= 30% lower than round robin)",
            "",
            "Open loop: Poisson arrivals at the same offered rate (same seed, same arrival times) for every",
            "policy; the runtime's `ModelClient` sends single samples (no client batching), 10 s per point.",
            f"Two replicas, one {lb['slow_factor']}x slower. `sim`: two simulated model servers (separate",
            f"processes that sleep {lb['sim_profile']['base_ms']:.0f} ms + {lb['sim_profile']['per_sample_ms']} ms per sample,",
            "the slow one x3): replicas on separate hardware, they do not compete for this machine's CPU.",
            "`triton`: two real tritonservers serving `encoder-large` (no dynamic batching, BLAS 1 thread), the",
            "slow one computing each forward pass 3 times; they share the 2 cores with the client.",
            "",
            "| setup | offered req/s | policy | achieved req/s | p50 ms | p95 ms | p99 ms | share to slow | p95 vs RR |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for setup in ("sim", "triton"):
            for row in lb[setup]:
                for s_ in lb["strategies"]:
                    r = row[s_]
                    out.append(
                        f"| {setup} | {row['offered_rps']:.0f} | {s_} | {r['achieved_rps']:.0f} | {r['p50_ms']:.1f} | "
                        f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['slow_share']:.0%} | {row['p95_vs_rr'][s_]:.2f} |"
                    )
        out += [""]
        for setup in ("sim", "triton"):
            for row in lb[setup]:
                lo = 1 - row["p95_vs_rr"]["least-outstanding"]
                pe = 1 - row["p95_vs_rr"]["least-latency"]
                out.append(
                    f"- {setup} at {row['offered_rps']:.0f} req/s: p95 lower than round robin by {lo:.0%} with "
                    f"least-outstanding ({'met' if lo >= 0.3 else 'missed'}), {pe:.0%} with least-latency "
                    f"({'met' if pe >= 0.3 else 'missed'})."
                )
        out += [
            "",
            "`peak-ewma` is Finagle's/Linkerd's balancer: the same cost, but the estimate is the peak-EWMA of the",
            "raw latency, which already includes the queueing that `outstanding + 1` counts again, and jumps to",
            "every spike. Least-outstanding is blind to speed: at light",
            "load both replicas are idle, ties split evenly, and the requests sent to the slow replica set p95.",
            "least-latency sends to the fast replica until its predicted latency exceeds the slow one's.",
            "",
            f"![balancing]({_plot_balancing(lb)})",
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
