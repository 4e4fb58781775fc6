"""shop-recs' item catalog: 4,096 generated product titles and their all-MiniLM-L6-v2 embeddings.

The embeddings are computed once by the query encoder's own network (``nets.build("query-encoder")``) and
committed as ``data/catalog-minilm.npy`` (float16, 3 MB), so the retrieve step, which runs in a worker
without torch, searches real sentence embeddings: a query for "trail running shoes" finds running shoes.
``python -m agentscale_worker.examples.catalog --write`` regenerates the file; workloads/tests/test_nets.py
fails when it drifts from the encoder.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import nets

COLORS = ("red", "black", "white", "blue", "green", "grey", "pink", "brown")
STYLES = ("cheap", "premium", "lightweight", "waterproof", "classic", "compact", "vintage", "wireless")
PRODUCTS = (
    "running shoes", "hiking boots", "sneakers", "sandals", "rain jacket", "winter coat", "hoodie", "t-shirt",
    "jeans", "yoga pants", "backpack", "laptop bag", "handbag", "wallet", "sunglasses", "wrist watch",
    "headphones", "earbuds", "bluetooth speaker", "laptop", "tablet", "smartphone", "phone case", "keyboard",
    "computer mouse", "monitor", "coffee maker", "espresso beans", "tea kettle", "water bottle",
    "desk lamp", "office chair", "sofa", "pillow", "blanket", "frying pan", "chef knife", "blender",
    "toaster", "vacuum cleaner", "bicycle", "bike helmet", "tennis racket", "football", "dumbbells",
    "yoga mat", "camping tent", "sleeping bag", "fishing rod", "board game", "jigsaw puzzle", "teddy bear",
    "dog bed", "cat toy", "perfume", "shampoo", "toothbrush", "lipstick", "novel", "cookbook",
    "guitar", "drum sticks", "umbrella", "suitcase",
)  # fmt: skip
FILE = Path(__file__).with_name("data") / "catalog-minilm.npy"


@functools.cache
def titles() -> tuple[str, ...]:
    """Item id -> title: every style x color x product (8 x 8 x 64 = 4,096)."""
    out = tuple(f"{s} {c} {p}" for p, s, c in itertools.product(PRODUCTS, STYLES, COLORS))
    assert len(out) == nets.CATALOG_SIZE
    return out


def compute(batch: int = 256) -> NDArray[Any]:
    """The titles' embeddings by the query encoder (needs torch and the model packages)."""
    net = nets.build("query-encoder")
    names = titles()
    parts = []
    for i in range(0, len(names), batch):
        x = np.array([[t.encode()] for t in names[i : i + batch]], dtype=object)
        parts.append(net({"QUERY_TEXT": x})["EMBEDDING"])
    return np.concatenate(parts)


@functools.cache
def embeddings() -> NDArray[Any]:
    """[CATALOG_SIZE, EMB] float32, unit length (renormalized after the float16 round trip)."""
    e = np.load(FILE).astype(np.float32)
    out: NDArray[Any] = e / np.linalg.norm(e, axis=1, keepdims=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentscale_worker.examples.catalog")
    parser.add_argument("--write", action="store_true", help=f"rewrite {FILE.name}")
    args = parser.parse_args(argv)
    e = compute().astype(np.float16)
    if args.write:
        FILE.parent.mkdir(exist_ok=True)
        np.save(FILE, e)
        print(f"wrote {FILE} {e.shape}")
        return 0
    same = FILE.exists() and np.allclose(np.load(FILE), e, atol=2e-3)
    print("up to date" if same else f"stale: {FILE}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
