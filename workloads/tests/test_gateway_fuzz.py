"""Fuzzing the gateway's request parsing with Hypothesis: the pure parser with thousands of generated bodies,
and a real gateway (real Redis, real HTTP) with generated methods, paths, content types, credentials and
bodies. Nothing may produce a 500 or an exception other than BadRequest; every status the gateway answers
is in its OpenAPI description. The counts are printed (``-s``) and recorded in docs/reliability.md."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from agentscale_harness.local import RedisServer
from agentscale_worker.config import Graph, Settings
from agentscale_worker.gateway import Gateway
from agentscale_worker.run_request import BadRequest, RunRequest, parse_request
from agentscale_worker.runtime import StepWorker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import base_settings

TOKEN = "fuzz-token-0123456789abcdef"
ONE_STEP = Graph.from_dict({"steps": {"a": {"next": []}}, "slo": {"p95LatencyMs": 60_000}})

# ---- strategies ----------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: past 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=30,
)
field_values = st.one_of(
    json_values,
    st.text(max_size=80),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from(["", "ok-id_1", "ünï", "١٢٣", "a" * 64, "a" * 65, "a.b", "a b", "\x00"]),
)
requests = st.dictionaries(
    st.sampled_from(["input", "priority", "timeout_ms", "run_id", "extra", "Input"]),
    field_values,
    max_size=5,
)


def _deep(n: int, opener: bytes) -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    inner = b"1" if opener == b"[" else b""
    if opener == b"{":
        return b'{"k":' * n + b"1" + b"}" * n
    return opener * n + inner + closer * n


hostile = st.one_of(
    st.builds(_deep, st.integers(1, 20_000), st.sampled_from([b"[", b"{"])),
    st.builds(lambda n: b'{"input": ' + b"9" * n + b"}", st.integers(1, 6000)),
    st.builds(lambda n: b'{"input": 0.' + b"5" * n + b"e308}", st.integers(1, 400)),
    st.sampled_from([b"NaN", b'{"input": Infinity}', b'{"input": -Infinity}', b"", b" ", b"\xff", b"\x00"]),
)
valid = st.fixed_dictionaries(
    {"input": json_values},
    optional={
        "priority": st.integers(-1000, 1000),
        "timeout_ms": st.integers(1, 60_000),
        "run_id": st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"),
    },
)
bodies = st.one_of(
    valid.map(lambda r: json.dumps(r).encode()),
    requests.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    hostile,
)

# ---- the pure parser ----------


def test_parse_request_only_ever_raises_bad_request() -> None:
    seen = Counter[str]()

    @settings(max_examples=4000, deadline=None, database=None)
    @given(body=bodies)
    def one(body: bytes) -> None:
        seen["tried"] += 1
        try:
            got = parse_request(body, None, 2, 300_000)
        except BadRequest as e:
            assert 400 <= e.status < 500, e
            seen[str(e.status)] += 1
            return
        assert isinstance(got, RunRequest)
        json.loads(got.data)  # what goes on the stream is JSON again
        seen["accepted"] += 1

    one()
    print(f"\nparse_request fuzz: {dict(seen)}")
    assert seen["tried"] >= 4000 and seen["accepted"] > 0 and seen["400"] > 0 and seen["422"] > 0


# ---- a real gateway ----------


class GatewayThread:
    """A gateway and a step worker (echo) on their own event loop in a thread, so that Hypothesis
    (synchronous) can drive them."""

    def __init__(self, s: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = self._call(lambda: _make(s))
        self.port: int = self._call(lambda: self.gateway.start(host="127.0.0.1", port=0))
        self.worker = StepWorker(replace(s, step="a", consumer="fuzz-a"), _echo)
        self._call(self.worker.start)

    def _call(self, make: Any) -> Any:
        async def run() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def stop(self) -> None:
        self._call(self.worker.drain)
        self._call(self.gateway.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _make(s: Settings) -> Gateway:
    return Gateway(s)


async def _echo(ctx: Any, payload: Any) -> Any:
    return payload


@pytest.fixture
def live_gateway(redis_server: RedisServer, tmp_path: Path) -> Iterator[GatewayThread]:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "fuzzer").write_text(TOKEN)
    s = base_settings(
        redis_server, "fuzz", ONE_STEP, gateway_tokens_dir=str(tokens), max_body_bytes=64 * 1024
    )
    gw = GatewayThread(s)
    yield gw
    gw.stop()


def _route(method: str, path: str) -> tuple[str, str]:
    """The OpenAPI path a request is for (``GET /v1/runs/sync`` reads the run named ``sync``)."""
    if path.startswith("/v1/runs/") and (path != "/v1/runs/sync" or method == "GET"):
        return "/v1/runs/{run_id}", method.lower()
    return path, method.lower()


def _send(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_gateway_never_answers_500(live_gateway: GatewayThread) -> None:
    seen = Counter[str]()
    statuses: set[tuple[str, str, int]] = set()  # (openapi path, method, status)

    @settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        method=st.sampled_from(["POST"] * 6 + ["GET", "GET", "PUT"]),
        path=st.tuples(
            st.integers(0, 9),
            st.sampled_from(["/v1/runs", "/v1/runs/sync"]),
            st.sampled_from(["/healthz", "/readyz", "/openapi.json", "/", "/v1", "/metrics"]),
            st.text(
                st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"), max_size=80
            ),
        ).map(lambda t: t[1] if t[0] < 7 else t[2] if t[0] < 8 else "/v1/runs/" + t[3]),  # 70% the run routes
        content_type=st.sampled_from(
            [
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                "",
                "application/x+json",
                "a/b",
            ]
        ),
        auth=st.sampled_from([f"Bearer {TOKEN}"] * 12 + ["", f"Bearer {TOKEN}x", "Basic abc", "Bearer"]),
        body=bodies,
    )
    def one(method: str, path: str, content_type: str, auth: str, body: bytes) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        if auth:
            headers["Authorization"] = auth
        status, payload = _send(live_gateway.port, method, path, headers, body if method != "GET" else None)
        seen["tried"] += 1
        seen[str(status)] += 1
        assert status < 500, (method, path, content_type, body[:100], payload[:300])
        if status not in (404, 405):  # aiohttp's own answers for routes and methods that do not exist
            statuses.add((*_route(method, path), status))

    one()
    print(f"\ngateway HTTP fuzz: {dict(seen)}")
    assert seen["tried"] >= 1500 and seen["202"] > 0 and seen["401"] > 0 and seen["415"] > 0
    doc = _fetch_openapi(live_gateway.port)
    for path, method, status in sorted(statuses):
        if method not in doc["paths"].get(path, {}):  # a method the route does not have: refused, no more
            assert status == 401, (method, path, status)
            continue
        responses = doc["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method.upper()} {path} answered {status}, not in /openapi.json"


async def test_openapi_describes_every_route(live_gateway: GatewayThread) -> None:
    app = live_gateway.gateway.app()
    routes = {(r.resource.canonical, r.method.lower()) for r in app.router.routes() if r.resource}
    doc = await asyncio.to_thread(_fetch_openapi, live_gateway.port)
    described = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes - {(p, "head") for p, _ in routes} == described
    assert doc["openapi"].startswith("3.1") and doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    limit = doc["paths"]["/v1/runs"]["post"]["responses"]["413"]["description"]
    assert str(64 * 1024) in limit  # the limits it states are the settings'


def _fetch_openapi(port: int) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/openapi.json")  # open: no token
    resp = conn.getresponse()
    assert resp.status == 200
    out = json.loads(resp.read())
    conn.close()
    return out
