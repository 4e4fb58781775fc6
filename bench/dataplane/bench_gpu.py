"""GPU only (NOT run on the 2-core CPU machine the other numbers come from): Triton serving a torch model
versus the same model's batched torch throughput on the same GPU (the limit). Target >= 0.8 of the limit.

The model: fp16 MLP 64 -> 16 x 8192 -> 16 (as in shared/FACTS.md). Run on a machine with an NVIDIA GPU,
torch and the nvidia-pytriton wheel:  python -m bench.dataplane.bench_gpu
It writes results/gpu.json with the GPU model (nvidia-smi / torch.cuda.get_device_name)."""

from __future__ import annotations

import asyncio
import site
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
from agentscale_harness.local import TritonServer

from .stack import save

MODEL_PY = textwrap.dedent("""
    import json, sys
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        @staticmethod
        def auto_complete_config(cfg):
            cfg.add_input({"name": "X", "data_type": "TYPE_FP16", "dims": [64]})
            cfg.add_output({"name": "Y", "data_type": "TYPE_FP16", "dims": [16]})
            cfg.set_dynamic_batching()
            return cfg

        def initialize(self, args):
            config = json.loads(args["model_config"])
            sys.path.append(config["parameters"]["torch_site"]["string_value"])
            import torch
            self.torch = torch
            torch.manual_seed(0)
            layers = [torch.nn.Linear(64, 8192), torch.nn.ReLU()]
            for _ in range(15):
                layers += [torch.nn.Linear(8192, 8192), torch.nn.ReLU()]
            layers += [torch.nn.Linear(8192, 16)]
            self.net = torch.nn.Sequential(*layers).half().cuda().eval()

        def execute(self, requests):
            torch = self.torch
            xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
            sizes = [len(x) for x in xs]
            with torch.inference_mode():
                y = self.net(torch.from_numpy(np.concatenate(xs)).cuda()).cpu().numpy()
            out, i = [], 0
            for n in sizes:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y[i:i + n])]))
                i += n
            return out
""")


def torch_limit(batch: int = 1024, iters: int = 50) -> tuple[float, str]:
    import torch

    torch.manual_seed(0)
    layers: list[Any] = [torch.nn.Linear(64, 8192), torch.nn.ReLU()]
    for _ in range(15):
        layers += [torch.nn.Linear(8192, 8192), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(8192, 16)).half().cuda().eval()
    x = np.random.default_rng(0).standard_normal((batch, 64)).astype(np.float16)
    with torch.inference_mode():
        for _ in range(5):
            net(torch.from_numpy(x).cuda()).cpu()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            net(torch.from_numpy(x).cuda()).cpu().numpy()
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t), torch.cuda.get_device_name()


async def triton_rate(url: str, request_batch: int = 256, clients: int = 12, seconds: float = 15) -> float:
    import tritonclient.grpc.aio as g

    client = g.InferenceServerClient(url)
    x = np.random.default_rng(0).standard_normal((request_batch, 64)).astype(np.float16)
    done = 0
    end = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < end:
            t = g.InferInput("X", list(x.shape), "FP16")
            t.set_data_from_numpy(x)
            await client.infer("gpu-mlp", [t])
            done += request_batch

    t0 = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(clients)))
    await client.close()
    return done / (time.monotonic() - t0)


def main() -> dict[str, Any]:
    limit, gpu = torch_limit()
    work = Path(tempfile.mkdtemp(prefix="agentscale-gpu-"))
    config = (
        'name: "gpu-mlp"\nbackend: "python"\nmax_batch_size: 1024\n'
        "dynamic_batching { preferred_batch_size: [ 512, 1024 ] max_queue_delay_microseconds: 2000 }\n"
        "instance_group [ { count: 1, kind: KIND_GPU } ]\n"
        f'parameters {{ key: "torch_site" value {{ string_value: "{site.getsitepackages()[0]}" }} }}\n'
    )
    server = TritonServer(work, models=["gpu-mlp"], config_overrides={"gpu-mlp": config})
    repo = work / "models" / "gpu-mlp" / "1"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "model.py").write_text(MODEL_PY)
    (work / "models" / "gpu-mlp" / "config.pbtxt").write_text(config)
    server._repo = lambda: work / "models"  # type: ignore[method-assign]
    server.start(ready_timeout_s=300)
    try:
        served = asyncio.run(triton_rate(server.grpc_url))
    finally:
        server.stop()
    out = {"gpu": gpu, "torch_limit_samples_s": limit, "triton_samples_s": served, "ratio": served / limit}
    print(out)
    save("gpu", out)
    return out


if __name__ == "__main__":
    main()
