"""SIMULATED model server, for scale tests only: not Triton, computes nothing, sleeps for the latency a
profile says. It speaks the KServe v2 gRPC protocol (``tritonclient``'s own service definitions), so the
real step runtime talks to it unchanged, and hundreds of "replicas" fit on one machine.

Latency model (per instance, requests queue FIFO and are batched like Triton's dynamic batcher):
    service_ms(batch) = base_ms + per_sample_ms * batch        (times ``speed``)
The default profile's numbers come from the real tritonserver runs on this project's 2-core CPU machine:
``bench/dataplane/results/profile.json`` (written by ``bench/dataplane/bench_profile.py``, which times
sequential requests of each batch size against the real Python-backend model and fits the line).
Outputs are zeros of the shapes the real model declares (``examples/nets.SPECS``)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .examples.nets import SPECS

DEFAULT_PROFILE = Path(__file__).resolve().parents[2] / "bench" / "dataplane" / "results" / "profile.json"
FALLBACK = {"base_ms": 1.2, "per_sample_ms": 0.05, "max_batch": 64, "source": "fallback constants"}


@dataclass
class Profile:
    base_ms: float
    per_sample_ms: float
    max_batch: int = 64

    def service_s(self, batch: int, speed: float = 1.0) -> float:
        return speed * (self.base_ms + self.per_sample_ms * batch) / 1000

    @classmethod
    def load(cls, path: str | Path | None, model: str) -> Profile:
        p = Path(path) if path else DEFAULT_PROFILE
        raw: dict[str, Any] = dict(FALLBACK)
        if p.exists():
            data = json.loads(p.read_text())
            raw = data.get("models", {}).get(model) or data.get("default") or raw
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
