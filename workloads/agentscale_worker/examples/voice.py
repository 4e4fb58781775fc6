"""voice-assistant: detect-speech (vad: Silero VAD) -> transcribe (asr, on the speech only) -> understand
(nlu) -> synthesize (tts). Audio is 16 kHz mono, up to one second."""

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


SPEECH_MIN = 0.5  # Silero's own default threshold for a speech chunk

# Formants (Hz) of five vowels, for the synthetic speech of sample inputs and tests.
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


def synth_speech(
    n: int = nets.AUDIO_LEN, seed: int = 0, start: int = 0, stop: int | None = None
) -> NDArray[Any]:
    """A voiced signal Silero VAD takes for speech: a glottal pulse train (pitch 110 Hz +- 25 with jitter)
    through three formant resonators, vowels changing every 180 ms, syllable-shaped loudness; zeros outside
    ``[start, stop)``. Peak 0.3."""
    rng = np.random.default_rng(seed)
    stop = n if stop is None else stop
    sr = nets.SAMPLE_RATE
    ht = np.arange(800) / sr
    out = np.zeros(stop - start + 800)
    seg = int(0.18 * sr)
    order = rng.permutation(len(VOWELS))
    pos, pitch = 0.0, 100 + 30 * rng.random()
    while pos < stop - start:
        i = int(pos)
        formants = VOWELS[order[(i // seg) % len(VOWELS)]]
        out[i : i + 800] += sum(
            np.exp(-np.pi * bw * ht) * np.sin(2 * np.pi * f * ht) / (k + 1)
            for k, (f, bw) in enumerate(zip(formants, (80, 100, 120), strict=True))
        )
        pos += sr / (pitch + 25 * np.sin(2 * np.pi * 3 * pos / sr) + rng.normal(0, 1))
    t = np.arange(stop - start) / sr
    voiced = out[: stop - start] * np.sqrt(np.clip(np.sin(np.pi * ((t * 1000 / 180) % 1.0)), 0, None))
    audio = np.zeros(n)
    audio[start:stop] = 0.3 * voiced / max(np.abs(voiced).max(), 1e-9)
    return audio.astype(np.float32)


def validate(payload: Any) -> str | None:
    if not isinstance(payload, dict) or "audio" not in payload:
        return f"expected an object with field 'audio' (a list of up to {nets.AUDIO_LEN} samples in [-1, 1])"
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


def padded(samples: list[float]) -> NDArray[Any]:
    audio = np.zeros(nets.AUDIO_LEN, dtype=np.float32)
    audio[: len(samples)] = np.asarray(samples, dtype=np.float32)
    return audio


def speech_span(prob: NDArray[Any]) -> tuple[int, int] | None:
    """Sample range [start, stop) from the first to the last chunk Silero scores as speech, or None."""
    idx = np.flatnonzero(np.asarray(prob) >= SPEECH_MIN)
    if idx.size == 0:
        return None
    return int(idx[0]) * nets.VAD_CHUNK, min(nets.AUDIO_LEN, (int(idx[-1]) + 1) * nets.VAD_CHUNK)


async def detect_speech(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    out = await ctx.infer({"AUDIO": padded(payload["audio"])})
    prob = out["SPEECH_PROB"]
    span = speech_span(prob)
    return {
        "audio": payload["audio"],
        "speech": span,
        "speech_chunks": int((prob >= SPEECH_MIN).sum()),
        "max_speech_prob": float(prob.max()),
    }


async def transcribe(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """ASR on the speech VAD found (everything else zeroed); no ASR call at all when there is none."""
    if payload["speech"] is None:
        return {"text": "", "speech": None}
    start, stop = payload["speech"]
    audio = padded(payload["audio"])
    audio[:start] = 0.0
    audio[stop:] = 0.0
    out = await ctx.infer({"AUDIO": audio})
    return {"text": ctc_decode(out["LOGITS"]), "speech": [start, stop]}


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
