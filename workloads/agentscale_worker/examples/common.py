"""Helpers shared by the example handlers: text <-> tokens, and a context that runs models in-process."""

from __future__ import annotations

import functools
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import nets


def word_tokens(text: str, length: int = nets.QUERY_LEN, vocab: int = nets.VOCAB) -> NDArray[Any]:
    ids = [zlib.crc32(w.encode()) % (vocab - 1) + 1 for w in text.lower().split()][:length]
    return np.array(ids + [0] * (length - len(ids)), dtype=np.int32)


def char_tokens(text: str, length: int = nets.TEXT_LEN) -> NDArray[Any]:
    ids = [nets.ALPHABET.find(c) for c in text.lower()][:length]
    ids = [i if i > 0 else 1 for i in ids]  # unknown characters read as a space
    return np.array(ids + [0] * (length - len(ids)), dtype=np.int32)


def floats(a: NDArray[Any]) -> list[Any]:
    return np.asarray(a, dtype=np.float64).tolist()  # type: ignore[no-any-return]


def text_tensor(text: str) -> NDArray[Any]:
    """One sample of a string input (Triton BYTES, dims [1]): the UTF-8 bytes in an object array."""
    return np.array([text.encode()], dtype=object)


@functools.cache
def local_net(model: str) -> nets.Net:
    """The model's network on the CPU, built once per process (MiniLM takes seconds to load)."""
    return nets.build(model)


class LocalContext:
    """Stands in for the runtime's StepContext: calls the torch network directly (batch of one).

    Used to compute reference outputs in tests and benchmarks; never on the serving path."""

    def __init__(self, model: str | None, run_id: str = "local") -> None:
        self.net = local_net(model) if model else None
        self.run_id = run_id
        self.attempt = 1

    async def infer(self, inputs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        assert self.net is not None
        out = self.net({k: np.asarray(v)[None] for k, v in inputs.items()})
        return {k: v[0] for k, v in out.items()}

    async def run_cpu(self, fn: Any, *args: Any) -> Any:
        return fn(*args)
