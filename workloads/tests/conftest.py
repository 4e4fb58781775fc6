from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agentscale_harness.local import RedisServer, TritonServer
from agentscale_worker.config import Graph, Settings
from agentscale_worker.examples import WORKFLOWS, graph
from agentscale_worker.gateway import Gateway
from agentscale_worker.handler import load_handler
from agentscale_worker.runtime import StepWorker

WORKLOADS = Path(__file__).resolve().parents[1]


def _missing(reason: str) -> None:
    """Skip on a laptop without the service; fail where the test command promised it (CI)."""
    if os.environ.get("AGENTSCALE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (AGENTSCALE_REQUIRE_SERVICES=1: bootstrap.sh should have installed it)")
    pytest.skip(reason)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not shutil.which("redis-server"):
        _missing("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    try:
        server = TritonServer(tmp_path_factory.mktemp("triton")).start()
    except RuntimeError as e:
        if "not installed" in str(e):
            _missing(str(e))
        raise
    yield server
    server.stop()


def base_settings(redis: RedisServer, workflow: str, g: Graph, **kw: Any) -> Settings:
    values: dict[str, Any] = dict(
        workflow=workflow,
        namespace="test",
        redis_url=redis.url,
        graph=g,
        metrics_port=0,
        claim_idle_ms=1000,
        claim_interval_s=0.2,
        retry_base_s=0.01,
        retry_max_s=0.05,
        drain_timeout_s=10,
    )
    values.update(kw)
    return Settings(**values)


@dataclass
class Flow:
    gateway: Gateway
    url: str
    workers: list[StepWorker] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None

    async def post(
        self, path: str, body: Any, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], Any]:
        """POST JSON (``body``) or ``raw`` bytes, as application/json unless ``headers`` say otherwise."""
        assert self.session
        h = {"Content-Type": "application/json", **(headers or {})}
        kw: dict[str, Any] = {"data": raw} if raw is not None else {"data": json.dumps(body)}
        async with self.session.post(self.url + path, headers=h, **kw) as r:
            return r.status, dict(r.headers), await r.json(content_type=None)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        assert self.session
        async with self.session.get(self.url + path, headers=headers) as r:
            return r.status, await r.json(content_type=None)


@asynccontextmanager
async def start_flow(
    redis: RedisServer,
    workflow: str,
    handlers: dict[str, str],
    g: Graph,
    triton: TritonServer | None = None,
    skip_steps: tuple[str, ...] = (),
    validator: Any = None,
    **kw: Any,
) -> AsyncIterator[Flow]:
    """Gateway and one in-process worker per step (except ``skip_steps``) on loopback."""
    base = base_settings(redis, workflow, g, **kw)
    gw = Gateway(base, validator)
    port = await gw.start(host="127.0.0.1", port=0)
    flow = Flow(gw, f"http://127.0.0.1:{port}")
    try:
        for step, spec in handlers.items():
            if step in skip_steps:
                continue
            model = g.steps[step][0] or ""
            s = replace(
                base,
                step=step,
                model=model,
                triton_host=triton.grpc_url if (triton and model) else "",
                consumer=f"{step}-{uuid.uuid4().hex[:6]}",
            )
            w = StepWorker(s, load_handler(spec))
            await w.start()
            flow.workers.append(w)
        flow.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        yield flow
    finally:
        if flow.session:
            await flow.session.close()
        for w in flow.workers:
            await w.drain()
        await gw.stop()


def example_flow(redis: RedisServer, triton: TritonServer, workflow: str, **kw: Any) -> Any:
    handlers = {s: h for s, (_, _, h) in WORKFLOWS[workflow].items()}
    return start_flow(redis, workflow, handlers, graph(workflow), triton, **kw)


def worker_env(settings: Settings, step: str, model: str = "", triton_host: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AGENTSCALE_WORKFLOW=settings.workflow,
        AGENTSCALE_NAMESPACE=settings.namespace,
        AGENTSCALE_STEP=step,
        AGENTSCALE_REDIS_URL=settings.redis_url,
        AGENTSCALE_GRAPH=settings.graph.to_json(),
        AGENTSCALE_MODEL=model,
        AGENTSCALE_TRITON_HOST=triton_host,
        AGENTSCALE_METRICS_PORT="0",
        AGENTSCALE_CONCURRENCY=str(settings.concurrency),
        AGENTSCALE_BATCH_MAX_SIZE=str(settings.batch_max_size),
        AGENTSCALE_BATCH_MAX_WAIT_MS=str(settings.batch_max_wait_ms),
        PYTHONPATH=os.pathsep.join([str(WORKLOADS), env.get("PYTHONPATH", "")]),
    )
    return env


def assert_close(got: Any, want: Any, path: str = "") -> None:
    """Equal structure and discrete values; floats within float32 tolerance."""
    if isinstance(want, float):
        assert isinstance(got, int | float), f"{path}: {got!r} is not a number"
        assert abs(got - want) <= 1e-4 + 1e-4 * abs(want), f"{path}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{path}: keys {got!r} != {want!r}"
        for k in want:
            assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: length differs"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"
