"""One source of Triton model configuration: the operator's renderer (``config_pbtxt``) over the API objects.

The committed ``workloads/models/*/config.pbtxt`` (what the Triton image ships) must be that rendering, and
the real tritonserver must load the rendering and report the rendered settings back; and what Triton answers
is what the same torch network answers when called directly (the networks themselves: test_nets.py)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import numpy as np
import pytest
from agentscale.render.triton import config_pbtxt
from agentscale_harness.local import TritonServer
from agentscale_harness.models import MODEL_REPO, committed_config, model_servers, on_cpu
from agentscale_worker.examples import nets

MODELS = model_servers()


def test_every_model_in_the_repository_has_one_definition() -> None:
    in_repo = {d.name for d in MODEL_REPO.iterdir() if (d / "1" / "model.py").exists()}
    assert in_repo == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_committed_config_is_the_operators_rendering(name: str) -> None:
    path = MODEL_REPO / name / "config.pbtxt"
    assert path.read_text() == committed_config(name), (
        f"{path} drifted from the rendering of {MODELS[name][1]}; python -m agentscale_harness.models --write"
    )


def _get(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, json.loads(r.read() or b"null")


@pytest.mark.triton
@pytest.mark.parametrize("name", sorted(MODELS))
def test_triton_serves_the_rendered_config(triton: TritonServer, name: str) -> None:
    """The session's tritonserver was given ``config_pbtxt(on_cpu(model))``; Triton itself reports it back."""
    model = on_cpu(MODELS[name][0])
    assert "kind: KIND_CPU" in config_pbtxt(model)
    base = f"http://127.0.0.1:{triton.http_port}/v2/models/{name}"
    status, _ = _get(f"{base}/ready")
    assert status == 200
    _, cfg = _get(f"{base}/config")
    assert cfg["name"] == name and cfg["backend"] == model.backend.value
    assert int(cfg["max_batch_size"]) == model.maxBatchSize
    db = model.dynamicBatching
    if db is None:
        assert "dynamic_batching" not in cfg
    else:
        got = cfg["dynamic_batching"]
        # Triton normalises an empty preferred list to [max_batch_size] (measured here: depth, nlu, planner)
        want = sorted(set(db.preferredBatchSizes)) or [model.maxBatchSize]
        assert [int(b) for b in got.get("preferred_batch_size", [])] == want
        assert int(got.get("max_queue_delay_microseconds", 0)) == db.maxQueueDelayMicroseconds
        assert bool(got.get("preserve_ordering", False)) == db.preserveOrdering
    groups = [(int(g["count"]), g["kind"]) for g in cfg["instance_group"]]
    assert groups == [(g.count, "KIND_CPU") for g in model.instanceGroups]


def _sample_batch(name: str, n: int = 3) -> dict[str, Any]:
    """Inputs of the model's declared shapes: queries for the text model, speech and silence for audio."""
    from agentscale_worker.examples.voice import synth_speech

    rng = np.random.default_rng(7)
    out: dict[str, Any] = {}
    for t in nets.SPECS[name].inputs:
        if t.dtype == "object":
            texts = ["red running shoes", "wireless noise cancelling headphones", "ein Kaffee bitte"][:n]
            out[t.name] = np.array([[s.encode()] for s in texts], dtype=object)
        elif t.dtype == "int32":
            out[t.name] = rng.integers(0, len(nets.ALPHABET), (n, *t.dims)).astype(np.int32)
        elif t.name == "AUDIO":
            out[t.name] = np.stack([synth_speech(seed=i, start=2000 * i) for i in range(n)])
        else:
            out[t.name] = rng.uniform(0, 1, (n, *t.dims)).astype(np.float32)
    return out


@pytest.mark.triton
@pytest.mark.parametrize("name", sorted(MODELS))
def test_triton_answers_equal_the_torch_module_called_directly(triton: TritonServer, name: str) -> None:
    """Every model: Triton (Python backend, the stub importing torch from this venv) returns, for a batch
    of three, what ``nets.build(name)`` returns when called in this process."""
    import tritonclient.http as httpclient

    x = _sample_batch(name)
    want = nets.build(name)(x)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    inputs = []
    for t in nets.SPECS[name].inputs:
        arr = x[t.name]
        inp = httpclient.InferInput(t.name, list(arr.shape), t.wire_type)
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    result = client.infer(name, inputs)
    for t in nets.SPECS[name].outputs:
        got = result.as_numpy(t.name)
        assert got.shape == (3, *t.dims) and got.dtype == np.float32
        np.testing.assert_allclose(got, want[t.name], rtol=1e-4, atol=1e-5, err_msg=f"{name}.{t.name}")
