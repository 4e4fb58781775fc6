"""The gateway's OpenAPI 3.1 description (served at ``GET /openapi.json``), built from the settings so that
the limits it states are the ones the gateway enforces. Clients and fuzzers (schemathesis) read it."""

from __future__ import annotations

from typing import Any

from .config import Settings
from .run_request import RUN_ID


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}
    return out


def _json(description: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def openapi(settings: Settings) -> dict[str, Any]:
    max_timeout = int(settings.request_timeout_s * 1000 * 10)
    run_id = {"type": "string", "pattern": f"^{RUN_ID.pattern}$"}
    request = {
        "type": "object",
        "additionalProperties": False,
        "required": ["input"],
        "properties": {
            "input": {"description": "the run's input, handed to the source steps (any JSON value)"},
            "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
            "timeout_ms": {"type": "number", "exclusiveMinimum": 0, "maximum": max_timeout},
            "run_id": run_id,
        },
    }
    state = {
        "type": "object",
        "required": ["run_id", "status"],
        "properties": {
            "run_id": run_id,
            "status": {"enum": ["queued", "done", "failed"]},
            "output": {"type": "object", "description": "{sink step: its output}"},
            "error": {"type": "string"},
            "latency_ms": {"type": "number"},
        },
    }
    queued = {
        "type": "object",
        "required": ["run_id", "status", "status_url"],
        "properties": {"run_id": run_id, "status": {"const": "queued"}, "status_url": {"type": "string"}},
    }
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunRequest"}}},
    }
    common = {
        "400": _error("not JSON, empty, nested too deep, or a number past the bounds"),
        "401": _error("no or an unknown bearer token (when the gateway has tokens)"),
        "413": _error(f"body over {settings.max_body_bytes} bytes"),
        "415": _error("Content-Type is not application/json"),
        "422": _error("a field is wrong; the message names it"),
        "409": _error("a run with this run_id exists"),
        "429": _error("shed: over the latency objective or this client's fair share", retry=True),
        "503": _error("the queue (Redis) is unreachable", retry=True),
    }
    security: list[dict[str, list[str]]] = [{"bearer": []}] if settings.gateway_tokens_dir else []
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"agentscale gateway of {settings.namespace}/{settings.workflow}",
            "version": "1",
            "description": "Submit runs of an agent workflow and read their results (docs/dataplane.md).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "RunRequest": request,
                "RunState": state,
                "Queued": queued,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            },
        },
        "security": security,
        "paths": {
            "/v1/runs/sync": {
                "post": {
                    "summary": "run and wait for the result",
                    "requestBody": body,
                    "responses": {
                        "200": _json("done", "RunState"),
                        "500": _error("the run failed (a step's error after its retries)"),
                        "504": _error("not finished within timeout_ms; poll status_url"),
                        **common,
                    },
                }
            },
            "/v1/runs": {
                "post": {
                    "summary": "submit a run",
                    "requestBody": body,
                    "responses": {"202": _json("queued; poll status_url", "Queued"), **common},
                }
            },
            "/v1/runs/{run_id}": {
                "get": {
                    "summary": "a run's state",
                    "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": run_id}],
                    "responses": {
                        "200": _json("the run", "RunState"),
                        "400": _error("not a valid run id"),
                        "401": common["401"],
                        "404": _error("unknown or expired"),
                        "429": common["429"],
                        "503": common["503"],
                    },
                }
            },
            "/healthz": {"get": {"security": [], "responses": {"200": _text("alive")}}},
            "/readyz": {
                "get": {
                    "security": [],
                    "responses": {"200": _text("Redis reachable"), "503": _text("Redis unreachable")},
                }
            },
            "/openapi.json": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "this document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
    }
