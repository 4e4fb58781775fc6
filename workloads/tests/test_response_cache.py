"""Triton's response cache, as the operator renders it, in the real tritonserver (2.51, from the
nvidia-pytriton wheel) serving a Python-backend model with dynamic batching: the rendered config.pbtxt and
``--cache-config`` switch it on, a repeated request is answered without running the model, a different one is
not, and the server's metrics count hits and misses (what the chart's PodMonitor scrapes from model pods).

The model is this file's own (``MODEL_PY``: y = 2x + 1, numpy only), so the test does not depend on the
example networks."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agentscale.api.caching import ResponseCache
from agentscale.api.models import DynamicBatching, ModelServer
from agentscale.render.triton import cache_args, config_pbtxt
from agentscale_harness.local import TritonServer
from agentscale_harness.models import on_cpu
from agentscale_worker.batching import BatchWindow
from agentscale_worker.triton import ModelClient

from .conftest import _missing

NAME = "cache-probe"
MODEL_PY = """
import os, site, sys
for folder in os.environ.get("AGENTSCALE_MODEL_SITE", "").split(os.pathsep):
    if folder:
        site.addsitedir(folder)
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [4]})
        config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [4]})
        return config

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = (2 * x + 1).astype(np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
"""


class ProbeServer(TritonServer):
    """The harness's tritonserver with one model, this file's."""

    def _repo(self) -> Path:
        repo = self.workdir / "models"
        (repo / NAME / "1").mkdir(parents=True, exist_ok=True)
        (repo / NAME / "1" / "model.py").write_text(MODEL_PY)
        (repo / NAME / "config.pbtxt").write_text(self.config_overrides[NAME])
        return repo


MODEL = ModelServer(
    name=NAME,
    modelRepository="file:///models",
    maxBatchSize=16,
    dynamicBatching=DynamicBatching(maxQueueDelayMicroseconds=1000),
    responseCache=ResponseCache(size="8Mi"),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProbeServer]:
    model = on_cpu(MODEL)
    s = ProbeServer(
        tmp_path_factory.mktemp("triton-cache"),
        config_overrides={NAME: config_pbtxt(model)},
        extra_args=cache_args(model),
    )
    try:
        s.start()
    except RuntimeError as e:
        if "not installed" in str(e):
            _missing(str(e))
        raise
    yield s
    s.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def infer(server: ProbeServer, x: list[float]) -> list[float]:
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": x}]}
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/v2/models/{NAME}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        out = json.loads(r.read())
    return [float(v) for v in out["outputs"][0]["data"]]


def counter(server: ProbeServer, name: str) -> float:
    """One of the server's per-model series (0 when it is not exported yet)."""
    text = _get(f"http://127.0.0.1:{server.metrics_port}/metrics")
    m = re.search(rf'^{name}\{{model="{NAME}",version="1"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.triton
def test_the_rendered_configuration_switches_the_cache_on(server: ProbeServer) -> None:
    assert cache_args(MODEL) == ["--cache-config=local,size=8388608"]
    config = json.loads(_get(f"http://127.0.0.1:{server.http_port}/v2/models/{NAME}/config"))
    assert config["response_cache"] == {"enable": True}
    assert config["max_batch_size"] == 16 and "dynamic_batching" in config


@pytest.mark.triton
def test_a_repeated_request_is_answered_without_running_the_model(server: ProbeServer) -> None:
    hits, misses = (
        counter(server, "nv_cache_num_hits_per_model"),
        counter(server, "nv_cache_num_misses_per_model"),
    )
    runs = counter(server, "nv_inference_count")  # "does not include cached requests"
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.5]  # differ in one element only
    assert infer(server, x) == [3.0, 5.0, 7.0, 9.0]
    assert infer(server, x) == [3.0, 5.0, 7.0, 9.0]
    assert infer(server, y) == [3.0, 5.0, 7.0, 10.0]  # a different request is not a hit
    assert infer(server, x) == [3.0, 5.0, 7.0, 9.0]
    assert counter(server, "nv_cache_num_hits_per_model") == hits + 2
    assert counter(server, "nv_cache_num_misses_per_model") == misses + 2
    assert counter(server, "nv_inference_count") == runs + 2  # the model ran once per distinct request


@pytest.mark.triton
async def test_the_workers_grpc_path_hits_the_cache(server: ProbeServer) -> None:
    """The step worker's own client (async gRPC, one sample per request): repeats are hits."""
    client = ModelClient(NAME, f"127.0.0.1:{server.grpc_port}", batching=BatchWindow(1, 0.0))
    await client.start()
    try:
        hits = counter(server, "nv_cache_num_hits_per_model")
        x = np.array([0.5, -1.0, 8.0, 0.0], dtype=np.float32)
        outs = [await client.infer({"X": x}) for _ in range(5)]
        other = await client.infer({"X": x + np.float32(1e-3)})
    finally:
        await client.close()
    for out in outs:
        np.testing.assert_array_equal(out["Y"], 2 * x + 1)
    np.testing.assert_allclose(other["Y"], 2 * (x + np.float32(1e-3)) + 1, rtol=1e-6)
    assert counter(server, "nv_cache_num_hits_per_model") == hits + 4
