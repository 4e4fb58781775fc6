"""voice-assistant: transcribe (asr) -> understand (nlu) -> synthesize (tts)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import nets
from .common import char_tokens, floats

REPLIES = {
    "weather": "it is sunny today",
    "music": "playing your music",
    "timer": "timer set",
    "lights": "lights are on",
    "news": "here is the news",
    "call": "calling now",
    "shopping": "added to your list",
    "smalltalk": "nice to talk to you",
}


def validate(payload: Any) -> str | None:
    if not isinstance(payload, dict) or "audio" not in payload:
        return "expected an object with field 'audio' (a list of up to 1600 samples in [-1, 1])"
    if set(payload) != {"audio"}:
        return f"unknown fields {sorted(str(k)[:40] for k in payload if k != 'audio')[:5]}; allowed: audio"
    audio = payload["audio"]
    if not isinstance(audio, list) or not 0 < len(audio) <= nets.AUDIO_LEN:
        return f"field 'audio' must be a list of 1 to {nets.AUDIO_LEN} numbers"
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and -1 <= x <= 1 for x in audio):
        return "field 'audio' must contain only numbers in [-1, 1]"
    return None


def ctc_decode(logits: NDArray[Any]) -> str:
    """Greedy CTC: best symbol per frame, collapse repeats, drop blanks (index 0)."""
    best = np.argmax(logits, axis=1)
    out, prev = [], -1
    for b in best.tolist():
        if b != prev and b != 0:
            out.append(nets.ALPHABET[b])
        prev = b
    return "".join(out).strip()


async def transcribe(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    audio = np.zeros(nets.AUDIO_LEN, dtype=np.float32)
    samples = np.asarray(payload["audio"], dtype=np.float32)
    audio[: len(samples)] = samples
    out = await ctx.infer({"AUDIO": audio})
    return {"text": ctc_decode(out["LOGITS"])}


async def understand(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    out = await ctx.infer({"TOKENS": char_tokens(payload["text"])})
    logits = out["INTENT_LOGITS"].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    i = int(np.argmax(p))
    intent = nets.INTENTS[i]
    return {"text": payload["text"], "intent": intent, "confidence": float(p[i]), "reply": REPLIES[intent]}


async def synthesize(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    out = await ctx.infer({"TEXT_TOKENS": char_tokens(payload["reply"])})
    wave = out["WAVEFORM"]
    return {
        "transcript": payload["text"],
        "intent": payload["intent"],
        "reply": payload["reply"],
        "sample_rate": 8000,
        "rms": float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))),
        "waveform": floats(wave),
    }
