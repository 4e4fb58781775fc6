"""Client side toward Triton: endpoint discovery, load balancing and micro-batching.

``ModelClient.infer`` takes ONE sample (arrays without the batch axis) and returns that sample's outputs.
Concurrent calls are grouped into one Triton request by :class:`~agentscale_worker.batching.BatchWindow`
(max size, max wait); a batch goes to the endpoint the :class:`~agentscale_worker.balancing.Balancer`
picks (least-outstanding, power-of-two, round-robin, or least-latency, which also learns each endpoint's
latency). Endpoints come from DNS of the model's headless Service (every pod IP), re-resolved periodically,
or from a fixed ``host:port,host:port`` list (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from . import metrics
from .aio import stop_tasks
from .balancing import Balancer
from .batching import BatchWindow

log = logging.getLogger(__name__)
Arrays = dict[str, npt.NDArray[Any]]
FAILURE_PENALTY_S = 1.0


class ModelUnavailable(Exception):
    """No replica could take the request: none discovered yet, or the server answered UNAVAILABLE (down,
    restarting, model not loaded). Not the message's fault: the step runtime retries it without spending a
    delivery."""


def parse_static(host: str, default_port: int) -> list[str] | None:
    """``a:1,b:2`` (or any value with a comma or port) -> endpoint list; a bare name -> None (use DNS)."""
    if "," not in host and ":" not in host:
        return None
    out = []
    for part in filter(None, (p.strip() for p in host.split(","))):
        out.append(part if ":" in part else f"{part}:{default_port}")
    return out


async def resolve(host: str, port: int) -> list[str]:
    """All addresses of a (headless Service) name, as sorted ``ip:port`` strings."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({f"{info[4][0]}:{port}" for info in infos})


@dataclass
class _Item:
    inputs: Arrays
    future: asyncio.Future[Arrays]
    t: float = field(default_factory=time.monotonic)


class ModelClient:
    def __init__(
        self,
        model: str,
        host: str,
        port: int = 8001,
        batching: BatchWindow | None = None,
        strategy: str = "least-outstanding",
        labels: metrics.StepLabels | None = None,
        dns_refresh_s: float = 5.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.model = model
        self.host = host
        self.port = port
        self.batching = batching or BatchWindow()
        self.balancer = Balancer(strategy)
        self.labels = labels or metrics.StepLabels("", "local", "")
        self.dns_refresh_s = dns_refresh_s
        self.timeout_s = timeout_s
        self._clients: dict[str, grpcclient.InferenceServerClient] = {}
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._sends: set[asyncio.Task[Any]] = set()
        self._have_endpoints = asyncio.Event()
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # recent request sizes, for tests and benches

    async def start(self) -> None:
        static = parse_static(self.host, self.port)
        if static is not None:
            self._set_endpoints(static)
        else:
            await self._refresh()
            self._tasks.append(asyncio.create_task(self._discover()))
        self._tasks.append(asyncio.create_task(self._batch_loop()))

    def _set_endpoints(self, endpoints: list[str]) -> None:
        if endpoints == self.balancer.endpoints:
            return
        log.info("model %s endpoints: %s", self.model, endpoints)
        self.balancer.set_endpoints(endpoints)
        for e in endpoints:
            if e not in self._clients:
                self._clients[e] = grpcclient.InferenceServerClient(e)
        for e in [e for e in self._clients if e not in endpoints]:
            client = self._clients.pop(e)
            task = asyncio.create_task(client.close())
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        if endpoints:
            self._have_endpoints.set()
        else:
            self._have_endpoints.clear()

    async def _refresh(self) -> None:
        try:
            self._set_endpoints(await resolve(self.host, self.port))
        except OSError as e:  # keep the last good set while DNS is unhappy
            log.warning("resolving %s failed: %s", self.host, e)
            metrics.ERRORS.labels(*self.labels, "dns").inc()

    async def _discover(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.dns_refresh_s)
            await self._refresh()

    async def infer(self, inputs: Arrays) -> Arrays:
        fut: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(inputs, fut))
        self._wake.set()
        return await fut

    async def _batch_loop(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            age = time.monotonic() - self._queue[0].t
            if self.batching.flush_now(len(self._queue), age):
                items = [self._queue.popleft() for _ in range(self.batching.take(len(self._queue)))]
                task = asyncio.create_task(self._send(items))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.batching.wait_left_s(age))

    async def _send(self, items: list[_Item]) -> None:
        try:
            outputs = await self.infer_batch(
                {k: np.stack([i.inputs[k] for i in items]) for k in items[0].inputs}
            )
        except Exception as e:
            for i in items:
                if not i.future.done():
                    i.future.set_exception(e)
            return
        for n, i in enumerate(items):
            if not i.future.done():
                i.future.set_result({k: v[n] for k, v in outputs.items()})

    async def infer_batch(self, batch: Arrays) -> Arrays:
        """Send one already-batched request (axis 0) to the chosen endpoint."""
        if not self._have_endpoints.is_set():
            try:
                await asyncio.wait_for(self._have_endpoints.wait(), self.timeout_s)
            except TimeoutError:
                raise ModelUnavailable(
                    f"model {self.model}: no endpoint of {self.host!r} within {self.timeout_s:.0f}s"
                ) from None
        tensors = []
        for name, arr in batch.items():
            arr = np.ascontiguousarray(arr)
            t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            t.set_data_from_numpy(arr)
            tensors.append(t)
        endpoint = self.balancer.acquire()
        depth = self.balancer.outstanding.get(endpoint, 1)
        gauge = metrics.TRITON_OUTSTANDING.labels(*self.labels, endpoint)
        gauge.inc()
        t0 = time.monotonic()
        # the latency the balancer learns from (least-latency); a failure counts as FAILURE_PENALTY_S at
        # least, so a replica that fails fast does not attract traffic
        observed = FAILURE_PENALTY_S
        try:
            result = await self._clients[endpoint].infer(self.model, tensors, client_timeout=self.timeout_s)
            observed = time.monotonic() - t0
        except InferenceServerException as e:
            if e.status() == "StatusCode.UNAVAILABLE":
                raise ModelUnavailable(f"model {self.model} at {endpoint}: {e.message()}") from e
            raise
        finally:
            self.balancer.release(endpoint, max(observed, time.monotonic() - t0), depth=depth)
            gauge.dec()
        metrics.TRITON_LATENCY.labels(*self.labels, self.model).observe(observed)
        n = len(next(iter(batch.values())))
        self.batch_sizes.append(n)
        metrics.BATCH_SIZE.labels(*self.labels, self.model).observe(n)
        response = result.get_response()
        return {o.name: result.as_numpy(o.name) for o in response.outputs}

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        await stop_tasks(self._tasks)
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(RuntimeError("model client closed"))
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)
        self._clients.clear()
