"""SIMULATED model server, for scale tests only: not Triton, computes nothing, sleeps for the latency a
profile says. It speaks the KServe v2 gRPC protocol (``tritonclient``'s own service definitions), so the
real step runtime talks to it unchanged, and hundreds of "replicas" fit on one machine.

Latency model (per instance, requests queue FIFO and are batched like Triton's dynamic batcher):
    service_ms(batch) = base_ms + per_sample_ms * batch        (times ``speed``)
The default profile's numbers come from the real tritonserver runs on this project's 2-core CPU machine:
``bench/dataplane/results/profile.json`` (written by ``bench/dataplane/bench_profile.py``, which times
sequential requests of each batch size against the real Python-backend model and fits the line).
Outputs are zeros of the shapes the real model declares (``agentscale_worker.examples.nets.SPECS``).

    python -m agentscale_harness.sim --model NAME [--model NAME ...] --port 8001 [--profile F] [--speed 1]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from agentscale_worker.examples.nets import SPECS
from tritonclient.grpc import service_pb2, service_pb2_grpc

DEFAULT_PROFILE = Path(__file__).resolve().parents[2] / "bench" / "dataplane" / "results" / "profile.json"


@dataclass
class Profile:
    base_ms: float
    per_sample_ms: float
    max_batch: int = 64

    def service_s(self, batch: int, speed: float = 1.0) -> float:
        return speed * (self.base_ms + self.per_sample_ms * batch) / 1000

    @classmethod
    def load(cls, path: str | Path | None, model: str) -> Profile:
        """``model``'s line from a profile file (default: the measured one), or the file's ``default`` entry
        (bench_profile.py writes the first model's fit there). No invented numbers: a missing file raises."""
        p = Path(path) if path else DEFAULT_PROFILE
        data = json.loads(p.read_text())
        raw: dict[str, Any] | None = data.get("models", {}).get(model) or data.get("default")
        if raw is None:
            raise KeyError(f"profile {p} has no line for model {model!r} and no 'default'")
        return cls(float(raw["base_ms"]), float(raw["per_sample_ms"]), int(raw.get("max_batch", 64)))


class _Model:
    def __init__(self, name: str, profile: Profile, speed: float) -> None:
        self.name, self.profile, self.speed = name, profile, speed
        self.queue: asyncio.Queue[tuple[int, asyncio.Future[None]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.batches: list[int] = []

    async def run(self) -> None:
        while True:
            items = [await self.queue.get()]
            n = items[0][0]
            while not self.queue.empty() and n + self.queue._queue[0][0] <= self.profile.max_batch:  # type: ignore[attr-defined]
                item = self.queue.get_nowait()
                items.append(item)
                n += item[0]
            self.batches.append(n)
            await asyncio.sleep(self.profile.service_s(n, self.speed))  # the simulation's whole point
            for _, fut in items:
                if not fut.done():
                    fut.set_result(None)

    async def infer(self, batch: int) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put((batch, fut))
        await fut


class SimServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, models: dict[str, _Model]) -> None:
        self.models = models

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=request.name in self.models)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        model = self.models.get(request.model_name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name}")
            raise AssertionError("abort raises")
        batch = int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 1
        await model.infer(batch)
        resp = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        spec = SPECS.get(request.model_name)
        for out in spec.outputs if spec else ():
            t = resp.outputs.add()
            t.name, t.datatype = out.name, out.wire_type
            t.shape.extend([batch, *out.dims])
            resp.raw_output_contents.append(np.zeros((batch, *out.dims), dtype=out.dtype).tobytes())
        return resp


async def start(
    models: list[str], port: int, profile: str | Path | None = None, speed: float = 1.0
) -> tuple[grpc.aio.Server, dict[str, _Model], int]:
    sims = {m: _Model(m, Profile.load(profile, m), speed) for m in models}
    for s in sims.values():
        s.task = asyncio.create_task(s.run())
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(SimServicer(sims), server)
    bound = server.add_insecure_port(f"0.0.0.0:{port}")
    await server.start()
    return server, sims, bound


async def serve(models: list[str], port: int, profile: str | None, speed: float, stop: asyncio.Event) -> None:
    server, sims, _ = await start(models, port, profile, speed)
    await stop.wait()
    await server.stop(grace=5)
    for s in sims.values():
        if s.task:
            s.task.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentscale_harness.sim", description="SIMULATED Triton")
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--profile", help="latency profile JSON (default: the one measured on real Triton)")
    parser.add_argument("--speed", type=float, default=1.0, help="latency multiplier (2 = twice as slow)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.model, args.port, args.profile, args.speed, stop)

    with contextlib.suppress(ImportError):  # as the worker CLI does
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
