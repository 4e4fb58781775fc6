"""Perception networks (seeded weights): a convolutional detector and depth estimator over 32x32 images (one
output per 4x4 cell of the 8x8 grid), and the driving planner."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .nets import GRID, PLAN_FEATURES
from .nets_text import mlp
from .nets_torch import ExampleNet

SCORE_BIAS = -0.8


class ConvNet(ExampleNet):
    """Backbone 3 -> 32 -> 64 (stride 2) -> 128 (stride 2) channels, giving the 8x8 grid; a 1x1 convolution
    mixes each cell with the image's mean (global context); a 1x1 head per cell. ``heads=5`` is the detector
    (box cx, cy, w, h relative to the cell, and a score, all sigmoid), ``heads=1`` the depth estimator
    (1 to 50 metres)."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.mix = nn.Conv2d(256, 128, 1)
        self.head = nn.Conv2d(128, heads, 1)

    def init_weights(self) -> None:
        super().init_weights()
        if self.heads == 5:
            # the untrained detector's score bias: the handler keeps cells above perception.SCORE_MIN, a
            # handful per image as on a real one
            assert self.head.bias is not None
            with torch.no_grad():
                self.head.bias[4] = SCORE_BIAS

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        h = self.backbone(inputs["IMAGE"])  # [B, 128, 8, 8]
        g = h.mean(dim=(2, 3), keepdim=True).expand_as(h)
        o = self.head(torch.relu(self.mix(torch.cat([h, g], dim=1))))  # [B, heads, 8, 8]
        if self.heads == 1:
            return {"DEPTH": 1.0 + 49.0 * torch.sigmoid(o[:, 0])}
        cells = torch.sigmoid(o.flatten(2).transpose(1, 2))  # [B, 64, 5], cell index = row * 8 + col
        assert cells.shape[1] == GRID * GRID
        return {"BOXES": cells[..., :4], "SCORES": cells[..., 4]}


class Planner(ExampleNet):
    """Tracked objects, their depths and the ego speed -> steer in [-1, 1], throttle and brake in [0, 1]:
    MLP 65 -> 256 -> 128 -> 3."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = mlp(PLAN_FEATURES, 256, 128, 3)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        o = self.layers(inputs["FEATURES"])
        return {"CONTROL": torch.cat([torch.tanh(o[:, :1]), torch.sigmoid(o[:, 1:])], dim=1)}
