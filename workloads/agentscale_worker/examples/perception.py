"""driving-perception: detect (detector) -> track (CPU association) and estimate-depth (depth) -> plan
(planner; joins both branches)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import nets

SCORE_MIN = 0.3  # the seeded detector scores its cells 0.14-0.37: keeps a handful (nets_vision.SCORE_BIAS)


MAX_TRACKS = 256


def validate(payload: Any) -> str | None:
    if not isinstance(payload, dict) or "image" not in payload:
        return "expected an object with field 'image' (3x32x32 numbers), optional 'tracks' and 'speed'"
    unknown = sorted(str(k)[:40] for k in set(payload) - {"image", "tracks", "speed"})
    if unknown:
        return f"unknown fields {unknown[:5]}; allowed: image, tracks, speed"
    try:
        img = np.asarray(payload["image"], dtype=np.float32)
    except (TypeError, ValueError):
        return "field 'image' must be a nested list of numbers"
    if img.shape != (3, nets.IMG, nets.IMG):
        return f"field 'image' must have shape [3, {nets.IMG}, {nets.IMG}], got {list(img.shape)}"
    if not np.isfinite(img).all():
        return "field 'image' must contain finite numbers"
    speed = payload.get("speed", 0.0)
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0 <= speed <= 100:
        return "field 'speed' must be a number in [0, 100] (m/s)"
    tracks = payload.get("tracks", [])
    if (
        not isinstance(tracks, list)
        or len(tracks) > MAX_TRACKS
        or not all(
            isinstance(t, dict)
            and isinstance(t.get("id"), int)
            and isinstance(t.get("box"), list)
            and len(t["box"]) == 4
            for t in tracks
        )
    ):
        return f"field 'tracks' must be a list of up to {MAX_TRACKS} {{'id': int, 'box': [cx, cy, w, h]}}"
    return None


def iou(a: NDArray[Any], b: NDArray[Any]) -> float:
    """IoU of two (cx, cy, w, h) boxes."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def decode_boxes(raw: NDArray[Any], scores: NDArray[Any]) -> list[dict[str, Any]]:
    """Patch-relative sigmoid outputs -> image boxes; keep confident ones, greedy NMS, at most MAX_OBJECTS."""
    cells = np.arange(nets.GRID * nets.GRID)
    boxes = np.stack(
        [
            (cells % nets.GRID + raw[:, 0]) / nets.GRID,
            (cells // nets.GRID + raw[:, 1]) / nets.GRID,
            raw[:, 2] * 0.5,
            raw[:, 3] * 0.5,
        ],
        axis=1,
    )
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] < SCORE_MIN or len(kept) >= nets.MAX_OBJECTS:
            break
        if all(iou(boxes[i], boxes[j]) < 0.5 for j in kept):
            kept.append(int(i))
    return [{"box": boxes[i].astype(np.float64).tolist(), "score": float(scores[i])} for i in kept]


async def detect(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    image = np.asarray(payload["image"], dtype=np.float32)
    out = await ctx.infer({"IMAGE": image})
    return {
        "detections": decode_boxes(out["BOXES"], out["SCORES"]),
        "image": payload["image"],
        "tracks": payload.get("tracks", []),
        "speed": float(payload.get("speed", 0.0)),
    }


def associate(detections: list[dict[str, Any]], prior: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Greedy IoU association of detections to prior tracks; unmatched detections start new tracks."""
    pairs = sorted(
        (
            (iou(np.asarray(d["box"]), np.asarray(t["box"])), di, ti)
            for di, d in enumerate(detections)
            for ti, t in enumerate(prior)
        ),
        reverse=True,
    )
    match: dict[int, int] = {}
    used: set[int] = set()
    for score, di, ti in pairs:
        if score >= 0.3 and di not in match and ti not in used:
            match[di] = ti
            used.add(ti)
    next_id = max([t["id"] for t in prior], default=0) + 1
    tracks = []
    for di, d in enumerate(detections):
        if di in match:
            t = prior[match[di]]
            tid, vel = t["id"], [d["box"][0] - t["box"][0], d["box"][1] - t["box"][1]]
        else:
            tid, vel, next_id = next_id, [0.0, 0.0], next_id + 1
        tracks.append({"id": tid, "box": d["box"], "score": d["score"], "velocity": vel})
    return tracks


async def track(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    tracks = await ctx.run_cpu(associate, payload["detections"], payload["tracks"])
    return {"tracks": tracks, "speed": payload["speed"]}


async def estimate_depth(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    out = await ctx.infer({"IMAGE": np.asarray(payload["image"], dtype=np.float32)})
    depth = out["DEPTH"]
    per_object = []
    for d in payload["detections"]:
        cx, cy = d["box"][0], d["box"][1]
        col, row = min(nets.GRID - 1, int(cx * nets.GRID)), min(nets.GRID - 1, int(cy * nets.GRID))
        per_object.append(float(depth[row, col]))
    return {"depths": per_object, "mean_depth": float(depth.mean())}


def plan_features(tracks: list[dict[str, Any]], depths: list[float], speed: float) -> NDArray[Any]:
    f = np.zeros(nets.PLAN_FEATURES, dtype=np.float32)
    for i, (t, d) in enumerate(zip(tracks[: nets.MAX_OBJECTS], depths, strict=False)):
        f[i * 8 : i * 8 + 8] = [*t["box"], d / 50.0, *t["velocity"], t["score"]]
    f[-1] = speed / 30.0
    return f


async def plan(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    tr, dp = payload["track"], payload["estimate-depth"]
    out = await ctx.infer({"FEATURES": plan_features(tr["tracks"], dp["depths"], tr["speed"])})
    steer, throttle, brake = (float(x) for x in out["CONTROL"])
    return {
        "steer": steer,
        "throttle": throttle,
        "brake": brake,
        "objects": [{"id": t["id"], "depth": d} for t, d in zip(tr["tracks"], dp["depths"], strict=False)],
    }
