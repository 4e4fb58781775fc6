"""The three example workflows: handlers, input validators, graphs, and an in-process reference run."""

from __future__ import annotations

from typing import Any

from ..config import Graph
from . import perception, recommendation, voice
from .common import LocalContext

MOD = "agentscale_worker.examples"

# workflow -> step -> (model, next, handler); mirrors workloads/examples/*.yaml
WORKFLOWS: dict[str, dict[str, tuple[str | None, tuple[str, ...], str]]] = {
    "shop-recs": {
        "encode": ("query-encoder", ("retrieve",), f"{MOD}.recommendation:encode"),
        "retrieve": (None, ("rank",), f"{MOD}.recommendation:retrieve"),
        "rank": ("ranker", (), f"{MOD}.recommendation:rank"),
    },
    "voice-assistant": {
        "detect-speech": ("vad", ("transcribe",), f"{MOD}.voice:detect_speech"),
        "transcribe": ("asr", ("understand",), f"{MOD}.voice:transcribe"),
        "understand": ("nlu", ("synthesize",), f"{MOD}.voice:understand"),
        "synthesize": ("tts", (), f"{MOD}.voice:synthesize"),
    },
    "driving-perception": {
        "detect": ("detector", ("track", "estimate-depth"), f"{MOD}.perception:detect"),
        "track": (None, ("plan",), f"{MOD}.perception:track"),
        "estimate-depth": ("depth", ("plan",), f"{MOD}.perception:estimate_depth"),
        "plan": ("planner", (), f"{MOD}.perception:plan"),
    },
}

VALIDATORS = {
    "shop-recs": recommendation.validate,
    "voice-assistant": voice.validate,
    "driving-perception": perception.validate,
}


def graph(workflow: str, p95_ms: int = 1000, rps: float = 0.0, priority: int = 0) -> Graph:
    return Graph(
        steps={s: (m, n) for s, (m, n, _) in WORKFLOWS[workflow].items()},
        priority=priority,
        p95_latency_ms=p95_ms,
        target_rps=rps,
    )


async def run_local(workflow: str, payload: Any) -> dict[str, Any]:
    """The same computation without queue or Triton: each handler in DAG order, models called directly."""
    from ..handler import load_handler

    g = graph(workflow)
    outputs: dict[str, Any] = {}
    for step in g.topological_order():
        preds = g.predecessors(step)
        if not preds:
            data = payload
        elif len(preds) == 1:
            data = outputs[preds[0]]
        else:
            data = {p: outputs[p] for p in preds}
        model, _, handler = WORKFLOWS[workflow][step]
        outputs[step] = await load_handler(handler)(LocalContext(model), data)  # type: ignore[arg-type]
    return {s: outputs[s] for s in g.sinks}


def sample_input(workflow: str, seed: int = 0) -> dict[str, Any]:
    """A valid, deterministic request input for ``workflow``."""
    import numpy as np

    from . import nets

    rng = np.random.default_rng(seed)
    if workflow == "shop-recs":
        words = ["red", "running", "shoes", "wireless", "headphones", "cheap", "laptop", "bag", "coffee"]
        return {"query": " ".join(rng.choice(words, size=3).tolist())}
    if workflow == "voice-assistant":
        # speech somewhere inside the second, over faint noise (the VAD step finds it)
        start = int(rng.integers(0, nets.AUDIO_LEN // 4))
        stop = int(rng.integers(nets.AUDIO_LEN // 2, nets.AUDIO_LEN))
        audio = voice.synth_speech(seed=seed, start=start, stop=stop) + rng.normal(0, 0.003, nets.AUDIO_LEN)
        return {"audio": np.clip(audio, -1, 1).round(4).tolist()}
    if workflow == "driving-perception":
        img = rng.uniform(0, 1, (3, nets.IMG, nets.IMG)).round(4)
        return {"image": img.tolist(), "speed": 12.5, "tracks": [{"id": 7, "box": [0.5, 0.5, 0.2, 0.2]}]}
    raise KeyError(workflow)
