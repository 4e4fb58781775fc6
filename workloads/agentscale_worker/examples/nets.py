"""The example networks, in plain numpy: the one copy of the computation.

Triton's Python-backend models (``workloads/models/<model>/1/model.py``) import this module and call
:func:`build`; the tests call the same functions directly and compare. Weights are generated from a fixed
seed per model at construction time, so every replica and every test computes the same numbers.

Each network takes a batch (axis 0) and returns a batch; ``SPECS`` declares the per-sample tensor shapes
(Triton ``dims`` without the batch axis) that ``auto_complete_config`` reports.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
F32 = np.float32


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple[int, ...]

    @property
    def triton_type(self) -> str:
        return {"float32": "TYPE_FP32", "int32": "TYPE_INT32"}[self.dtype]

    @property
    def wire_type(self) -> str:
        return {"float32": "FP32", "int32": "INT32"}[self.dtype]


@dataclass(frozen=True)
class ModelSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


# Sizes shared with the handlers.
VOCAB = 1000  # recommendation query tokens
QUERY_LEN = 16
EMB = 64
CATALOG_SIZE = 4096
TOP_K = 32
AUDIO_LEN = 1600  # 0.1 s at 16 kHz
FRAME = 80
FRAMES = AUDIO_LEN // FRAME  # 20
ALPHABET = "_ abcdefghijklmnopqrstuvwxyz.'?!"  # index 0 is the CTC blank
TEXT_LEN = 32
INTENTS = ("weather", "music", "timer", "lights", "news", "call", "shopping", "smalltalk")
WAVE_LEN = 800
IMG = 32
PATCH = 4
GRID = IMG // PATCH  # 8 -> 64 patches
MAX_OBJECTS = 8
PLAN_FEATURES = MAX_OBJECTS * 8 + 1
# encoder-large (benchmark model): token embeddings -> 1024 -> 4096 -> 4096 -> 1024, 25M float32 weights
# (100 MB). One sample is a matrix-vector product per layer (memory-bound, ~5 ms on one 2-core-machine
# core); a batch of 32 reads the same weights once (compute-bound GEMM), so batching pays here as on a GPU.
LARGE_WIDTH = 1024
LARGE_HIDDEN = 4096

SPECS: dict[str, ModelSpec] = {
    "query-encoder": ModelSpec(
        (TensorSpec("QUERY_TOKENS", "int32", (QUERY_LEN,)),),
        (TensorSpec("EMBEDDING", "float32", (EMB,)),),
    ),
    "encoder-large": ModelSpec(
        (TensorSpec("QUERY_TOKENS", "int32", (QUERY_LEN,)),),
        (TensorSpec("EMBEDDING", "float32", (LARGE_WIDTH,)),),
    ),
    "ranker": ModelSpec(
        (TensorSpec("QUERY", "float32", (EMB,)), TensorSpec("ITEMS", "float32", (TOP_K, EMB))),
        (TensorSpec("SCORES", "float32", (TOP_K,)),),
    ),
    "asr": ModelSpec(
        (TensorSpec("AUDIO", "float32", (AUDIO_LEN,)),),
        (TensorSpec("LOGITS", "float32", (FRAMES, len(ALPHABET))),),
    ),
    "nlu": ModelSpec(
        (TensorSpec("TOKENS", "int32", (TEXT_LEN,)),),
        (TensorSpec("INTENT_LOGITS", "float32", (len(INTENTS),)),),
    ),
    "tts": ModelSpec(
        (TensorSpec("TEXT_TOKENS", "int32", (TEXT_LEN,)),),
        (TensorSpec("WAVEFORM", "float32", (WAVE_LEN,)),),
    ),
    "detector": ModelSpec(
        (TensorSpec("IMAGE", "float32", (3, IMG, IMG)),),
        (TensorSpec("BOXES", "float32", (GRID * GRID, 4)), TensorSpec("SCORES", "float32", (GRID * GRID,))),
    ),
    "depth": ModelSpec(
        (TensorSpec("IMAGE", "float32", (3, IMG, IMG)),),
        (TensorSpec("DEPTH", "float32", (GRID, GRID)),),
    ),
    "planner": ModelSpec(
        (TensorSpec("FEATURES", "float32", (PLAN_FEATURES,)),),
        (TensorSpec("CONTROL", "float32", (3,)),),
    ),
}


def _rng(name: str, seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()) + seed)


def _dense(rng: np.random.Generator, n_in: int, n_out: int) -> tuple[Array, Array]:
    w = rng.standard_normal((n_in, n_out)).astype(F32) * F32(np.sqrt(2.0 / n_in))
    b = (rng.standard_normal(n_out) * 0.01).astype(F32)
    return w, b


def _relu(x: Array) -> Array:
    out: Array = np.maximum(x, F32(0))
    return out


def _sigmoid(x: Array) -> Array:
    out: Array = (F32(1) / (F32(1) + np.exp(-x))).astype(F32)
    return out


def _mlp(layers: list[tuple[Array, Array]], x: Array, final: Callable[[Array], Array] | None = None) -> Array:
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = _relu(x)
    return final(x) if final else x


def _patchify(img: Array) -> Array:
    """[B, 3, 32, 32] -> [B, 64, 48]: non-overlapping 4x4 patches, the stride-4 conv's receptive fields."""
    b = img.shape[0]
    x = img.reshape(b, 3, GRID, PATCH, GRID, PATCH).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, GRID * GRID, 3 * PATCH * PATCH)


Net = Callable[[dict[str, Array]], dict[str, Array]]


def build(model: str, seed: int = 0) -> Net:
    """Return the batched forward function of ``model`` with its deterministic weights."""
    rng = _rng(model, seed)
    if model == "query-encoder":
        table = rng.standard_normal((VOCAB, EMB)).astype(F32)
        layers = [_dense(rng, EMB, 256), _dense(rng, 256, 256), _dense(rng, 256, EMB)]

        def query_encoder(x: dict[str, Array]) -> dict[str, Array]:
            tok = np.asarray(x["QUERY_TOKENS"]).astype(np.int64) % VOCAB
            h = table[tok].mean(axis=1)
            e = _mlp(layers, h)
            e = e / (np.linalg.norm(e, axis=1, keepdims=True) + F32(1e-6))
            return {"EMBEDDING": e.astype(F32)}

        return query_encoder
    if model == "encoder-large":
        table = rng.standard_normal((VOCAB, LARGE_WIDTH)).astype(F32)
        dims = [LARGE_WIDTH, LARGE_HIDDEN, LARGE_HIDDEN, LARGE_WIDTH]
        # weights stored [out, in] (torch.nn.Linear's layout) and applied as W @ x^T: OpenBLAS then keeps
        # small batches cheap instead of repacking the large matrix for every call
        tlayers = []
        for n_in, n_out in itertools.pairwise(dims):
            w, b = _dense(rng, n_in, n_out)
            tlayers.append((np.ascontiguousarray(w.T), b[:, None]))

        def encoder_large(x: dict[str, Array]) -> dict[str, Array]:
            tok = np.asarray(x["QUERY_TOKENS"]).astype(np.int64) % VOCAB
            h = np.ascontiguousarray(table[tok].mean(axis=1).T)  # [width, batch]
            for i, (w, b) in enumerate(tlayers):
                h = w @ h + b
                if i < len(tlayers) - 1:
                    h = _relu(h)
            e = h.T / (np.linalg.norm(h, axis=0)[:, None] + F32(1e-6))
            return {"EMBEDDING": np.ascontiguousarray(e, dtype=F32)}

        return encoder_large
    if model == "ranker":
        layers = [_dense(rng, 3 * EMB, 128), _dense(rng, 128, 64), _dense(rng, 64, 1)]

        def ranker(x: dict[str, Array]) -> dict[str, Array]:
            q = np.asarray(x["QUERY"], dtype=F32)[:, None, :]
            items = np.asarray(x["ITEMS"], dtype=F32)
            qb = np.broadcast_to(q, items.shape)
            feats = np.concatenate([qb, items, qb * items], axis=2)
            s = _mlp(layers, feats)[..., 0]
            return {"SCORES": s.astype(F32)}

        return ranker
    if model == "asr":
        conv = _dense(rng, FRAME * 3, 128)  # each frame sees itself and its two neighbours
        layers = [_dense(rng, 128, 128), _dense(rng, 128, len(ALPHABET))]

        def asr(x: dict[str, Array]) -> dict[str, Array]:
            a = np.asarray(x["AUDIO"], dtype=F32).reshape(-1, FRAMES, FRAME)
            pad = np.pad(a, ((0, 0), (1, 1), (0, 0)))
            ctx = np.concatenate([pad[:, :-2], pad[:, 1:-1], pad[:, 2:]], axis=2)
            h = _relu(ctx @ conv[0] + conv[1])
            return {"LOGITS": _mlp(layers, h).astype(F32)}

        return asr
    if model in ("nlu", "tts"):
        table = rng.standard_normal((len(ALPHABET), 48)).astype(F32)
        pos = rng.standard_normal((TEXT_LEN, 48)).astype(F32) * F32(0.1)
        n_out = len(INTENTS) if model == "nlu" else WAVE_LEN
        layers = [_dense(rng, 48 * 2, 256), _dense(rng, 256, 256), _dense(rng, 256, n_out)]

        def text_net(x: dict[str, Array]) -> dict[str, Array]:
            key = "TOKENS" if model == "nlu" else "TEXT_TOKENS"
            tok = np.asarray(x[key]).astype(np.int64) % len(ALPHABET)
            e = table[tok] + pos
            h = np.concatenate([e.mean(axis=1), e.max(axis=1)], axis=1)
            if model == "nlu":
                return {"INTENT_LOGITS": _mlp(layers, h).astype(F32)}
            return {"WAVEFORM": _mlp(layers, h, np.tanh).astype(F32)}

        return text_net
    if model in ("detector", "depth"):
        embed = _dense(rng, 3 * PATCH * PATCH, 64)
        mix = _dense(rng, 64 * 2, 64)
        head = _dense(rng, 64, 5 if model == "detector" else 1)

        def vision(x: dict[str, Array]) -> dict[str, Array]:
            p = _patchify(np.asarray(x["IMAGE"], dtype=F32))
            h = _relu(p @ embed[0] + embed[1])
            g = np.broadcast_to(h.mean(axis=1, keepdims=True), h.shape)  # global context
            h = _relu(np.concatenate([h, g], axis=2) @ mix[0] + mix[1])
            o = h @ head[0] + head[1]
            if model == "depth":
                d = F32(1) + F32(49) * _sigmoid(o[..., 0])  # metres
                return {"DEPTH": d.reshape(-1, GRID, GRID).astype(F32)}
            return {"BOXES": _sigmoid(o[..., :4]).astype(F32), "SCORES": _sigmoid(o[..., 4]).astype(F32)}

        return vision
    if model == "planner":
        layers = [_dense(rng, PLAN_FEATURES, 256), _dense(rng, 256, 128), _dense(rng, 128, 3)]

        def planner(x: dict[str, Array]) -> dict[str, Array]:
            o = _mlp(layers, np.asarray(x["FEATURES"], dtype=F32))
            ctl = np.concatenate([np.tanh(o[:, :1]), _sigmoid(o[:, 1:])], axis=1)
            return {"CONTROL": ctl.astype(F32)}

        return planner
    raise KeyError(f"unknown model {model!r}; known: {sorted(SPECS)}")
