"""Schemathesis against a real gateway (real Redis, real HTTP, an echo step worker): the schema is the one the
gateway serves at ``GET /openapi.json``; every operation gets requests generated from it, positive (fit the
schema) and negative (do not), each sent with the valid bearer token, with none and with a wrong one. Every
response must pass schemathesis's checks: no 5xx, a status the document lists for the operation, the content
type and body schema it declares, the headers it declares. The counts are printed (``-s``) and recorded in
docs/reliability.md."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from agentscale_harness.local import RedisServer
from hypothesis import HealthCheck, given, settings
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import base_settings
from .test_gateway_fuzz import ONE_STEP, TOKEN, GatewayThread

EXAMPLES = 200  # per operation and generation mode; each example is sent three times (token, none, wrong)
CREDENTIALS = {"token": f"Bearer {TOKEN}", "none": None, "wrong": f"Bearer {TOKEN}-not"}


def no_server_error(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """schemathesis's not_a_server_error, less the one 5xx the gateway is documented to give a healthy run:
    POST /v1/runs/sync's 504 when the run is not done within the request's timeout_ms (schemathesis sends
    timeouts down to 5e-324 ms), whose body must then say the run is still queued and where to poll it."""
    if case.operation.label == "POST /v1/runs/sync" and response.status_code == 504:
        body = json.loads(response.content)
        assert body["status"] == "queued" and body["status_url"] == f"/v1/runs/{body['run_id']}", body
        return True
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def gateway(redis_server: RedisServer, tmp_path: Path) -> Iterator[GatewayThread]:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "schemathesis").write_text(TOKEN)
    s = base_settings(redis_server, "st", ONE_STEP, gateway_tokens_dir=str(tokens), max_body_bytes=64 * 1024)
    gw = GatewayThread(s)
    yield gw
    gw.stop()


def _send(case: Case, base_url: str, credential: str | None, seen: Counter[str]) -> None:
    headers = dict(case.headers or {})
    headers.pop("Authorization", None)  # whatever the generator made for the bearer scheme: ours instead
    if credential is not None:
        headers["Authorization"] = credential
    case.headers = headers
    response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)
    seen["requests"] += 1
    seen[f"{response.status_code}"] += 1


def _fuzz(op: APIOperation, mode: GenerationMode, base_url: str, seen: Counter[str]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def one(case: Case) -> None:
        seen[f"cases {mode.value}"] += 1
        for credential in CREDENTIALS.values():
            _send(case, base_url, credential, seen)

    one()


@pytest.mark.timeout(300)
def test_gateway_passes_schemathesis_checks(gateway: GatewayThread) -> None:
    base_url = f"http://127.0.0.1:{gateway.port}"
    # from the live document; not from_url, which leaves out the path it was served from (/openapi.json)
    doc = requests.get(f"{base_url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.label for op in operations} == {
        "POST /v1/runs/sync",
        "POST /v1/runs",
        "GET /v1/runs/{run_id}",
        "GET /healthz",
        "GET /readyz",
        "GET /openapi.json",
    }
    seen = Counter[str]()
    for op in operations:
        spec = doc["paths"][op.path][op.method]
        has_input = "parameters" in spec or "requestBody" in spec  # else there is nothing to make invalid
        for mode in [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * has_input:
            _fuzz(op, mode, base_url, seen)
    print(f"\nschemathesis: {dict(sorted(seen.items()))}")
    assert seen["requests"] >= len(operations) * 3
    assert seen["202"] > 0 and seen["200"] > 0 and seen["401"] > 0 and seen["422"] > 0
