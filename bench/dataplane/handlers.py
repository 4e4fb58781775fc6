"""Step handler of the batching benchmark's workflow: one call to ``encoder-large``. Returns a short summary
of the embedding (not its 1024 floats), so the run's cost is the model's, not JSON through Redis."""

from __future__ import annotations

from typing import Any

import numpy as np
from agentscale_worker.examples.common import word_tokens


async def encode_large(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    out = await ctx.infer({"QUERY_TOKENS": word_tokens(payload["query"])})
    e = np.asarray(out["EMBEDDING"])
    return {"query": payload["query"], "dim": int(e.shape[0]), "top": int(np.argmax(e))}
