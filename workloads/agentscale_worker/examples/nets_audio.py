"""Audio networks: voice-activity detection (real Silero VAD weights) and speech recognition (seeded)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .nets import ALPHABET, FRAME, FRAMES, VAD_CHUNK, VAD_CHUNKS
from .nets_torch import ExampleNet


def silero_data(name: str = "silero_vad.jit") -> Path:
    """A file the ``silero-vad`` package ships, found without importing the package (its ``__init__`` sets
    torch's thread count for the whole process)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise RuntimeError("silero-vad is not installed (pip install silero-vad; see docs/models.md)")
    return Path(spec.origin).parent / "data" / name


class SileroVAD(ExampleNet):
    """Silero VAD at 16 kHz (MIT), written as a torch module over the weights of the model the package's
    ``load_silero_vad()`` returns (``silero_vad.jit``, 309,633 parameters): each 512-sample chunk, with the
    previous chunk's last 64 samples as context, goes through a learned STFT (256-point, hop 128), four 1-D
    convolutions and an LSTM cell that carries state from chunk to chunk; the output is the speech
    probability of every chunk.
    The whole utterance is one call, so a batch holds independent utterances and no state outlives a call.
    Matches that TorchScript model run chunk by chunk (workloads/tests/test_nets.py)."""

    CONTEXT = 64

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    @classmethod
    def from_package(cls) -> SileroVAD:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the package ships this file
            warnings.simplefilter("ignore", DeprecationWarning)
            jit = torch.jit.load(str(silero_data()), map_location="cpu")._model  # type: ignore[no-untyped-call]
        params = dict(jit.named_parameters()) | dict(jit.named_buffers())
        names = {"stft_conv.weight": "stft.forward_basis_buffer"}
        for i in range(4):
            for p in ("weight", "bias"):
                names[f"conv{i + 1}.{p}"] = f"encoder.{i}.reparam_conv.{p}"
                names[f"final_conv.{p}"] = f"decoder.decoder.2.{p}"
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            names[f"lstm_cell.{p}"] = f"decoder.rnn.{p}"
        net = cls()
        net.load_state_dict({ours: params[theirs].detach().clone() for ours, theirs in names.items()})
        return net

    def features(self, chunks: Tensor) -> Tensor:
        """[N, 64 + 512] samples -> [N, 128] encoder output."""
        x = F.pad(chunks, (0, 64), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)
        x = torch.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        return x.squeeze(-1)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        audio = inputs["AUDIO"]
        b = audio.shape[0]
        padded = F.pad(audio[:, : VAD_CHUNKS * VAD_CHUNK], (self.CONTEXT, 0))
        chunks = padded.unfold(1, self.CONTEXT + VAD_CHUNK, VAD_CHUNK)  # [B, chunks, 576]
        feats = self.features(chunks.reshape(b * VAD_CHUNKS, -1)).reshape(b, VAD_CHUNKS, -1)
        h = c = feats.new_zeros(b, 128)
        states = []
        for i in range(VAD_CHUNKS):
            h, c = self.lstm_cell(feats[:, i], (h, c))
            states.append(h)
        hs = torch.relu(torch.stack(states, dim=2))  # [B, 128, chunks]
        return {"SPEECH_PROB": torch.sigmoid(self.final_conv(hs)).squeeze(1)}


class Recognizer(ExampleNet):
    """asr: 10 ms frames (160 samples) -> three 1-D convolutions over time (256 channels, each frame sees
    its neighbours) -> per-frame CTC logits over the alphabet."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(FRAME, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(hidden, len(ALPHABET), 1),
        )

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        frames = inputs["AUDIO"].reshape(-1, FRAMES, FRAME).transpose(1, 2)
        return {"LOGITS": self.layers(frames).transpose(1, 2)}
