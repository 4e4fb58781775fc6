"""Drift: fields we apply that someone changed by hand. Pure: a desired object and a live one in, paths out.

Only what the operator renders is compared, so fields the API server defaults, and fields other managers
own (an HPA's ``spec.replicas`` in mode hpa: the renderer leaves the field out), never count as drift. Lists
of named items (containers, env, ports, volumes) are matched by name, and items someone else added are left
alone (server-side apply would leave them too); other lists are compared item by item. Quantities compare by
value, since the API server writes ``0.5`` back as ``500m``, and empty values we send (``value: ""``,
``false``, ``{}``) equal an omitted field, since the API server drops them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from agentscale.api.models import parse_quantity

# Everything a person can edit on our children except status and bookkeeping.
_COMPARED_META = ("labels", "annotations", "ownerReferences")
_IGNORED_TOP = ("apiVersion", "kind", "metadata", "status")


def _hash(part: Any) -> str:
    raw = json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def live_digests(body: Mapping[str, Any], generation_tracks_spec: bool = False) -> tuple[str, str]:
    """Hashes of what a person could have edited: (labels, annotations and owners; everything but status).

    Status-only updates (most events of a Deployment) keep both, so they skip the comparison entirely, and a
    change of metadata alone needs only metadata compared. For kinds whose ``metadata.generation`` moves with
    every spec change, the generation stands in for the spec.
    """
    meta = body.get("metadata") or {}
    if generation_tracks_spec and meta.get("generation"):
        rest: Any = meta["generation"]
    else:
        rest = {k: v for k, v in body.items() if k not in _IGNORED_TOP}
    return _hash({k: meta.get(k) for k in _COMPARED_META}), _hash(rest)


def live_digest(body: Mapping[str, Any], generation_tracks_spec: bool = False) -> str:
    """Both of :func:`live_digests` in one string."""
    return ":".join(live_digests(body, generation_tracks_spec))


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    if have is None and want in ("", False, 0):
        return True  # the API server omits empty values of omitempty fields (env value "", false flags)
    if isinstance(want, str | int) and isinstance(have, str | int) and not isinstance(want, bool):
        a, b = parse_quantity(want), parse_quantity(have)
        return a is not None and a == b
    return False


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def _diff(want: Any, have: Any, path: str, out: list[str]) -> None:
    if have is None and isinstance(want, Mapping | list) and not want:
        return  # an empty map or list we send may come back omitted
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            out.append(path)
            return
        for k, v in want.items():
            _diff(v, have.get(k), f"{path}.{k}" if path else str(k), out)
    elif isinstance(want, list):
        if not isinstance(have, list):
            out.append(path)
        elif _named(want) and all(isinstance(i, Mapping) for i in have):
            by_name = {i.get("name"): i for i in have}
            for item in want:
                _diff(item, by_name.get(item["name"]), f"{path}[{item['name']}]", out)
        elif len(want) != len(have):
            out.append(path)
        else:
            for i, (w, h) in enumerate(zip(want, have, strict=True)):
                _diff(w, h, f"{path}[{i}]", out)
    elif not _same_scalar(want, have):
        out.append(path)


def drifted_fields(
    desired: Mapping[str, Any], live: Mapping[str, Any], *, beyond_metadata: bool = True
) -> list[str]:
    """Paths (``spec.template.spec.containers[worker].image``) where ``live`` no longer holds what
    ``desired`` sets. Empty when nothing we own was changed. ``beyond_metadata=False`` compares labels,
    annotations and owners only (when the rest is known unchanged)."""
    out: list[str] = []
    want_meta, have_meta = desired.get("metadata") or {}, live.get("metadata") or {}
    for k in _COMPARED_META:
        if k in want_meta:
            _diff(want_meta[k], have_meta.get(k), f"metadata.{k}", out)
    if beyond_metadata:
        for k, v in desired.items():
            if k not in _IGNORED_TOP:
                _diff(v, live.get(k), k, out)
    return out
