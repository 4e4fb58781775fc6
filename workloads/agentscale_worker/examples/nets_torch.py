"""Running the example networks: numpy batches in, torch on a device under ``inference_mode``, numpy out.

:class:`ExampleNet` is the base of every network in ``nets_text``, ``nets_audio`` and ``nets_vision``: a
``torch.nn.Module`` whose ``forward`` maps input tensors (named as in ``nets.SPECS``) to output tensors.
:func:`make_module` builds one by name, with weights from a fixed seed (``torch.manual_seed`` inside
``fork_rng``, so the caller's random state is untouched) unless it loads pretrained ones.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .nets import Array, ModelSpec


class ExampleNet(nn.Module):
    """A network of the examples: ``forward(inputs) -> outputs``, both keyed by the spec's tensor names."""

    def prepare(self, x: dict[str, Array], device: torch.device) -> dict[str, Any]:
        """numpy inputs -> what ``forward`` takes (tensors on ``device``); text models tokenize here."""
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in x.items()}

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def init_weights(self) -> None:
        """Seeded networks: He-normal weights (std sqrt(2 / fan_in)) and small biases, so activations keep
        their scale through the layers and outputs (scores, logits) are spread rather than all alike."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.ConvTranspose1d):
                fan_in = m.weight[0].numel() if not isinstance(m, nn.ConvTranspose1d) else m.weight.shape[0]
                nn.init.normal_(m.weight, std=(2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=0.01)


class TorchNet:
    """The callable a Triton model and a test both use: ``net({name: batch}) -> {name: batch}``."""

    def __init__(self, module: ExampleNet, spec: ModelSpec, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.spec = spec

    def __call__(self, x: dict[str, Array]) -> dict[str, Array]:
        missing = [t.name for t in self.spec.inputs if t.name not in x]
        if missing:
            raise KeyError(f"missing inputs {missing}; the model takes {[t.name for t in self.spec.inputs]}")
        with torch.inference_mode():
            out = self.module(self.module.prepare(x, self.device))
            return {t.name: out[t.name].to(torch.float32).cpu().numpy() for t in self.spec.outputs}


def seed_of(model: str, seed: int = 0) -> int:
    return zlib.crc32(model.encode()) + seed


def make_module(model: str, seed: int = 0) -> ExampleNet:
    """The network ``model``: pretrained weights from an installed package, or drawn from the seed."""
    from . import nets_audio, nets_text, nets_vision

    pretrained: dict[str, Callable[[], ExampleNet]] = {
        "query-encoder": nets_text.MiniLMEncoder.from_package,
        "vad": nets_audio.SileroVAD.from_package,
    }
    seeded: dict[str, Callable[[], ExampleNet]] = {
        "encoder-large": nets_text.TokenEncoder,
        "ranker": nets_text.Ranker,
        "nlu": nets_text.IntentClassifier,
        "tts": nets_text.Synthesizer,
        "asr": nets_audio.Recognizer,
        "detector": lambda: nets_vision.ConvNet(heads=5),
        "depth": lambda: nets_vision.ConvNet(heads=1),
        "planner": nets_vision.Planner,
    }
    if model in pretrained:
        return pretrained[model]().eval()
    if model not in seeded:
        raise KeyError(f"unknown model {model!r}; known: {sorted([*pretrained, *seeded])}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(model, seed))
        net = seeded[model]()
        net.init_weights()
        return net.eval()
