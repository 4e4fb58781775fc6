"""shop-recs: encode (query-encoder: all-MiniLM-L6-v2 on the query text) -> retrieve (top-k by cosine
against the catalog's title embeddings, CPU) -> rank (ranker)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import catalog as item_catalog
from . import nets
from .common import floats, text_tensor


def catalog() -> NDArray[Any]:
    """The item catalog's embeddings, [CATALOG_SIZE, EMB], unit length: all-MiniLM-L6-v2 of each item's title
    (``catalog.py``)."""
    return item_catalog.embeddings()


def validate(payload: Any) -> str | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return "expected an object with a string field 'query'"
    if set(payload) != {"query"}:
        return f"unknown fields {sorted(str(k)[:40] for k in payload if k != 'query')[:5]}; allowed: query"
    if not payload["query"].strip():
        return "field 'query' must not be empty"
    if len(payload["query"]) > nets.QUERY_MAX_CHARS:
        return f"field 'query' is longer than {nets.QUERY_MAX_CHARS} characters"
    return None


async def encode(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    out = await ctx.infer({"QUERY_TEXT": text_tensor(payload["query"])})
    return {"query": payload["query"], "embedding": floats(out["EMBEDDING"])}


def top_k(embedding: NDArray[Any], k: int = nets.TOP_K) -> NDArray[Any]:
    scores = catalog() @ embedding
    idx = np.argpartition(-scores, k)[:k]
    return idx[np.argsort(-scores[idx], kind="stable")]


async def retrieve(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    emb = np.asarray(payload["embedding"], dtype=np.float32)
    ids = await ctx.run_cpu(top_k, emb)
    return {"query": payload["query"], "embedding": payload["embedding"], "candidates": ids.tolist()}


async def rank(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    ids = np.asarray(payload["candidates"], dtype=np.int64)
    out = await ctx.infer(
        {"QUERY": np.asarray(payload["embedding"], dtype=np.float32), "ITEMS": catalog()[ids]}
    )
    scores = out["SCORES"]
    order = np.argsort(-scores, kind="stable")[:10]
    names = item_catalog.titles()
    return {
        "query": payload["query"],
        "items": [{"id": int(ids[i]), "title": names[ids[i]], "score": float(scores[i])} for i in order],
    }
