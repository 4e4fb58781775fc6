"""A run request, from bytes to a checked value: the one place the gateway's hostile-input bounds live.

Pure and synchronous (the gateway runs it in a worker thread for large bodies, so a slow parse never holds
the event loop). Every way a body can be wrong raises :class:`BadRequest` with a 4xx status and a message
naming the field and the fix; nothing a client sends turns into a 500. Bounds (see docs/dataplane.md,
"Gateway security"): the body size (checked by the gateway before reading, again here), the nesting depth
(``max_depth``), integers within 64 bits, decimal literals of at most 64 characters and finite, no
``NaN``/``Infinity`` literals, and run ids of 1-64 ASCII letters, digits, ``_`` or ``-``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Validator = Callable[[Any], str | None]  # input -> error message naming what is wrong, or None

RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # ASCII by construction (no re.UNICODE classes)
RUN_ID_RULE = "1-64 ASCII letters, digits, '_' or '-'"
FIELDS = ("input", "priority", "timeout_ms", "run_id")
INT_MAX = 2**63  # integers must lie in [-2**63, 2**63)
FLOAT_MAX_CHARS = 64
JSON_TYPES = ("application/json",)


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RunRequest:
    input: Any
    data: str  # ``input`` as compact JSON: what goes on the stream
    priority: int
    timeout_ms: float
    run_id: str | None  # None: the gateway picks one


def valid_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and RUN_ID.fullmatch(run_id) is not None


def check_content_type(content_type: str) -> None:
    """415 unless the body says it is JSON: ``application/json`` (parameters allowed) or ``+json``."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in JSON_TYPES or (mime.startswith("application/") and mime.endswith("+json")):
        return
    shown = mime[:60] or "none"
    raise BadRequest(415, f"Content-Type is {shown!r}; send the body as 'application/json'")


class _Bound(ValueError):
    """A literal past the number bounds (raised from json's hooks, caught as a 400)."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise _Bound(f"an integer has {len(text.lstrip('-'))} digits; integers must fit in 64 bits")
    value = int(text)
    if not -INT_MAX <= value < INT_MAX:
        raise _Bound("an integer is outside [-2**63, 2**63); integers must fit in 64 bits")
    return value


def _float(text: str) -> float:
    if len(text) > FLOAT_MAX_CHARS:
        raise _Bound(f"a number literal has {len(text)} characters; the limit is {FLOAT_MAX_CHARS}")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Bound(f"the number {text} overflows a 64-bit float")
    return value


def _constant(name: str) -> Any:
    raise _Bound(f"{name} is not JSON; send finite numbers (or null)")


def depth_of(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion; stops past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            d += 1
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads_bounded(body: bytes, max_depth: int) -> Any:
    """``json.loads`` with the number and depth bounds; BadRequest(400) naming the problem otherwise."""
    try:
        value = json.loads(body, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except _Bound as e:
        raise BadRequest(400, f"body: {e}") from None
    except RecursionError:
        raise BadRequest(400, f"body nests deeper than {max_depth} levels; flatten it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"body is not valid JSON: {str(e)[:200]}") from None
    if depth_of(value, max_depth) > max_depth:
        raise BadRequest(400, f"body nests deeper than {max_depth} levels; flatten it")
    return value


def parse_request(
    body: bytes,
    validator: Validator | None,
    default_priority: int,
    max_timeout_ms: int,
    max_body: int = 1 << 20,
    max_depth: int = 32,
) -> RunRequest:
    """Validate a run request body; raise BadRequest with a message naming the problem."""
    if len(body) > max_body:
        raise BadRequest(413, f"body is {len(body)} bytes; the limit is {max_body}")
    if not body.strip():
        raise BadRequest(400, "body is empty; send a JSON object with an 'input' field")
    req = loads_bounded(body, max_depth)
    if not isinstance(req, dict):
        raise BadRequest(422, "body must be a JSON object with an 'input' field")
    unknown = sorted(str(k)[:40] for k in set(req) - set(FIELDS))
    if unknown:
        raise BadRequest(422, f"unknown fields {unknown[:10]}; allowed: {', '.join(FIELDS)}")
    if "input" not in req:
        raise BadRequest(422, "field 'input' is required")
    prio = req.get("priority", default_priority)
    if not isinstance(prio, int) or isinstance(prio, bool) or not -1000 <= prio <= 1000:
        raise BadRequest(422, "field 'priority' must be an integer in [-1000, 1000]")
    timeout = req.get("timeout_ms", min(30_000, max_timeout_ms))
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= max_timeout_ms:
        raise BadRequest(422, f"field 'timeout_ms' must be a number in (0, {max_timeout_ms}]")
    run_id = req.get("run_id")
    if "run_id" in req and not valid_run_id(run_id):
        raise BadRequest(422, f"field 'run_id' must be {RUN_ID_RULE} (omit it and the gateway picks one)")
    if validator is not None:
        try:
            problem = validator(req["input"])
        except Exception as e:  # a validator that trips on odd input must not turn it into a 500
            log.warning("validator raised on an input: %s: %s", type(e).__name__, e)
            problem = f"rejected by the validator ({type(e).__name__})"
        if problem:
            raise BadRequest(422, f"input: {problem}")
    data = json.dumps(req["input"], separators=(",", ":"))
    return RunRequest(req["input"], data, prio, float(timeout), run_id)
