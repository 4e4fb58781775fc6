"""Triton serving a torch model versus the same model's batched torch throughput on one device (the limit).
Target on a GPU: >= 0.9x of raw torch with host copies.

Two shapes, one code path (the network, the model.py Triton runs, the clients, the measurement):

- ``GPU`` (the published figure): fp16 MLP 64 -> 16 x 8192 -> 16 (as in shared/FACTS.md), dynamic batching
  512/1024, one GPU instance. Run on a machine with an NVIDIA GPU, torch and the nvidia-pytriton wheel:
  ``python -m bench.dataplane.bench_gpu``; it writes results/gpu.json with the GPU's name.
- ``CPU`` (so the path cannot rot): fp32 MLP 64 -> 2 x 256 -> 16 on the CPU, a few seconds.
  ``python -m bench.dataplane.bench_gpu --cpu`` writes results/gpu-cpu.json;
  ``workloads/tests/test_bench_gpu_cpu.py`` runs it in CI and checks Triton's answers equal raw torch's.

The device comes from the instance kind Triton passes to ``initialize`` (KIND_GPU -> cuda, else cpu), so the
two shapes differ only in their parameters."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from agentscale_harness.local import TritonServer

from .stack import save

MODEL = "torch-mlp"

# The one definition of the network: exec'd here and inside Triton's model.py, so both build the same
# layers from the same seed.
NET_SRC = textwrap.dedent("""
    def build_net(torch, inputs, hidden, layers, outputs, dtype, device):
        torch.manual_seed(0)
        mods = [torch.nn.Linear(inputs, hidden), torch.nn.ReLU()]
        for _ in range(layers - 1):
            mods += [torch.nn.Linear(hidden, hidden), torch.nn.ReLU()]
        mods += [torch.nn.Linear(hidden, outputs)]
        return torch.nn.Sequential(*mods).to(getattr(torch, dtype)).to(device).eval()
""")

MODEL_PY = textwrap.dedent("""
    import json, os, site, sys

    for _p in filter(None, os.environ.get("AGENTSCALE_MODEL_SITE", "").split(os.pathsep)):
        site.addsitedir(_p)  # before numpy: the stub ignores virtual environments

    import numpy as np
    import triton_python_backend_utils as pb_utils

    NET_SRC = {net_src!r}


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            p = {{k: v["string_value"] for k, v in config["parameters"].items()}}
            for folder in filter(None, p.get("torch_site", "").split(os.pathsep)):
                site.addsitedir(folder)
            import torch
            self.torch = torch
            gpu = args["model_instance_kind"] == "GPU"
            self.device = f"cuda:{{args['model_instance_device_id']}}" if gpu else "cpu"
            scope = {{}}
            exec(NET_SRC, scope)
            self.net = scope["build_net"](torch, int(p["inputs"]), int(p["hidden"]), int(p["layers"]),
                                          int(p["outputs"]), p["dtype"], self.device)

        def execute(self, requests):
            torch = self.torch
            xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
            sizes = [len(x) for x in xs]
            with torch.inference_mode():
                y = self.net(torch.from_numpy(np.concatenate(xs)).to(self.device)).cpu().numpy()
            out, i = [], 0
            for n in sizes:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y[i:i + n])]))
                i += n
            return out
""")


@dataclass(frozen=True)
class Shape:
    """The network, the server's batching and the load: everything the GPU and CPU runs differ in."""

    device: str  # "cuda" or "cpu"
    hidden: int
    layers: int
    dtype: str  # torch dtype name: float16, float32
    max_batch: int
    preferred: tuple[int, ...]
    request_batch: int
    clients: int
    seconds: float
    limit_batch: int
    limit_iters: int
    inputs: int = 64
    outputs: int = 16

    @property
    def np_dtype(self) -> Any:
        return np.dtype(self.dtype)

    @property
    def triton_dtype(self) -> str:
        return {"float16": "FP16", "float32": "FP32"}[self.dtype]


GPU = Shape("cuda", 8192, 16, "float16", 1024, (512, 1024), 256, 12, 15, 1024, 50)
CPU = Shape("cpu", 256, 2, "float32", 256, (64, 128), 32, 4, 3, 256, 40)


def config_pbtxt(shape: Shape, torch_site: str) -> str:
    params = {
        "torch_site": torch_site,
        "inputs": shape.inputs,
        "hidden": shape.hidden,
        "layers": shape.layers,
        "outputs": shape.outputs,
        "dtype": shape.dtype,
    }
    kind = "KIND_GPU" if shape.device == "cuda" else "KIND_CPU"
    pref = ", ".join(str(n) for n in shape.preferred)
    text = (
        f'name: "{MODEL}"\nbackend: "python"\nmax_batch_size: {shape.max_batch}\n'
        f'input [ {{ name: "X" data_type: TYPE_{shape.triton_dtype} dims: [ {shape.inputs} ] }} ]\n'
        f'output [ {{ name: "Y" data_type: TYPE_{shape.triton_dtype} dims: [ {shape.outputs} ] }} ]\n'
        f"dynamic_batching {{ preferred_batch_size: [ {pref} ] max_queue_delay_microseconds: 2000 }}\n"
        f"instance_group [ {{ count: 1, kind: {kind} }} ]\n"
    )
    for k, v in params.items():
        text += f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
    return text


def build_net(shape: Shape) -> Any:
    import torch

    scope: dict[str, Any] = {}
    exec(NET_SRC, scope)
    return scope["build_net"](
        torch, shape.inputs, shape.hidden, shape.layers, shape.outputs, shape.dtype, shape.device
    )


def sample(shape: Shape, n: int, seed: int = 0) -> Any:
    return np.random.default_rng(seed).standard_normal((n, shape.inputs)).astype(shape.np_dtype)


def torch_answers(net: Any, shape: Shape, x: Any) -> Any:
    import torch

    with torch.inference_mode():
        return net(torch.from_numpy(x).to(shape.device)).cpu().numpy()


def torch_limits(net: Any, shape: Shape) -> dict[str, float]:
    """Raw torch at ``limit_batch``, samples/s: compute only (input already on the device, output left
    there) and with host copies (numpy -> device -> numpy, what a server must do)."""
    import torch

    def sync() -> None:
        if shape.device == "cuda":
            torch.cuda.synchronize()

    x = sample(shape, shape.limit_batch)
    out: dict[str, float] = {}
    with torch.inference_mode():
        xd = torch.from_numpy(x).to(shape.device)
        steps: tuple[tuple[str, Callable[[], Any]], ...] = (
            ("compute_only", lambda: net(xd)),
            ("with_copies", lambda: net(torch.from_numpy(x).to(shape.device)).cpu().numpy()),
        )
        for _, step in steps:  # warm both first (thread pools, allocator, kernels)
            for _ in range(max(5, shape.limit_iters // 4)):
                step()
        sync()
        for name, step in steps:
            t = time.perf_counter()
            for _ in range(shape.limit_iters):
                step()
            sync()
            out[name] = shape.limit_batch * shape.limit_iters / (time.perf_counter() - t)
    return out


async def triton_rate(url: str, shape: Shape) -> float:
    """Samples/s through Triton: ``clients`` gRPC clients, each sending ``request_batch`` samples a time."""
    import tritonclient.grpc.aio as g

    client = g.InferenceServerClient(url)
    x = sample(shape, shape.request_batch)
    done = 0
    end = time.monotonic() + shape.seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < end:
            t = g.InferInput("X", list(x.shape), shape.triton_dtype)
            t.set_data_from_numpy(x)
            await client.infer(MODEL, [t])
            done += shape.request_batch

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(loop() for _ in range(shape.clients)))
    finally:
        await client.close()
    return done / (time.monotonic() - t0)


async def triton_answers(url: str, shape: Shape, x: Any) -> Any:
    """Triton's output for ``x``, sent as concurrent requests of 4 samples (so the server batches them)."""
    import tritonclient.grpc.aio as g

    client = g.InferenceServerClient(url)

    async def one(part: Any) -> Any:
        t = g.InferInput("X", list(part.shape), shape.triton_dtype)
        t.set_data_from_numpy(part)
        return (await client.infer(MODEL, [t])).as_numpy("Y")

    try:
        parts = await asyncio.gather(*(one(x[i : i + 4]) for i in range(0, len(x), 4)))
    finally:
        await client.close()
    return np.concatenate(parts)


class _Server(TritonServer):
    """tritonserver over a repository this benchmark writes (one model) instead of workloads/models."""

    def _repo(self) -> Path:
        return self.workdir / "models"


def torch_site() -> str:
    import torch

    return str(Path(torch.__file__).resolve().parents[1])


def run(shape: Shape, check_samples: int = 64) -> dict[str, Any]:
    """Measure ``shape``: raw torch limits, Triton's throughput, and Triton's answers against raw torch's."""
    net = build_net(shape)
    limits = torch_limits(net, shape)
    work = Path(tempfile.mkdtemp(prefix="agentscale-torch-mlp-"))
    model_dir = work / "models" / MODEL
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(MODEL_PY.format(net_src=NET_SRC))
    (model_dir / "config.pbtxt").write_text(config_pbtxt(shape, torch_site()))
    server = _Server(work).start(ready_timeout_s=300)
    try:
        x = sample(shape, check_samples, seed=1)
        served_answers = asyncio.run(triton_answers(server.grpc_url, shape, x))
        served = asyncio.run(triton_rate(server.grpc_url, shape))
    finally:
        server.stop()
    want = torch_answers(net, shape, x)
    tol = 1e-2 if shape.dtype == "float16" else 1e-4
    return {
        "device": device_name(shape),
        "shape": asdict(shape),
        "torch_compute_samples_s": limits["compute_only"],
        "torch_with_copies_samples_s": limits["with_copies"],
        "triton_samples_s": served,
        "ratio_with_copies": served / limits["with_copies"],
        "ratio_compute_only": served / limits["compute_only"],
        "answers_checked": check_samples,
        "answers_max_abs_diff": float(np.max(np.abs(served_answers.astype(np.float64) - want))),
        "answers_match": bool(np.allclose(served_answers, want, rtol=tol, atol=tol)),
    }


def device_name(shape: Shape) -> str:
    if shape.device == "cuda":
        import torch

        return str(torch.cuda.get_device_name())
    from .stack import machine

    return machine()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane.bench_gpu")
    parser.add_argument("--cpu", action="store_true", help="the CPU variant (small MLP, a few seconds)")
    args = parser.parse_args(argv)
    out = run(CPU if args.cpu else GPU)
    print(json.dumps(out, indent=2))
    save("gpu-cpu" if args.cpu else "gpu", out)
    return out


if __name__ == "__main__":
    main()
