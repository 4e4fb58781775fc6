"""Reading and parsing run request bodies at the gateway without letting big or many bodies hurt everyone.

A body is refused before it is read when its type is not JSON (415), its declared length is over the
route's limit (413), or the bytes of all bodies being read and parsed would pass ``body_budget`` (429,
``Retry-After: 1``; a body without a length reserves the whole limit). While read it is counted, so a
chunked body stops at the limit too. Parsing and validation (``run_request.parse_request``) run in a pool of
``parse_concurrency`` threads, at most that many at once, so /healthz keeps answering while big bodies are
parsed. Bodies up to ``INLINE_PARSE_BYTES`` are parsed and validated on the event loop: that takes well
under a millisecond (a thread hop would cost more at thousands of requests per second), provided the
validator is fast on small inputs, which is its contract."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from .config import Settings
from .run_request import BadRequest, RunRequest, Validator, check_content_type, parse_request

INLINE_PARSE_BYTES = 64 * 1024


class BodyReader:
    def __init__(self, settings: Settings, validator: Validator | None) -> None:
        self.settings = settings
        self.validator = validator
        self.limit = settings.max_body_bytes
        self.budget = max(settings.body_budget_bytes, settings.max_body_bytes)
        self.in_flight = 0  # bytes reserved by bodies being read or parsed
        self._slots = asyncio.Semaphore(settings.parse_concurrency)
        self._pool = ThreadPoolExecutor(settings.parse_concurrency, thread_name_prefix="parse")

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    async def read(self, request: web.Request) -> RunRequest:
        """The request's run, checked; raises BadRequest (4xx) naming what is wrong."""
        check_content_type(request.headers.get("Content-Type", ""))
        declared = request.content_length
        if declared is not None and declared > self.limit:
            raise BadRequest(413, f"body is {declared} bytes; the limit of this route is {self.limit}")
        reserve = declared if declared is not None else self.limit
        if self.in_flight + reserve > self.budget:
            raise BadRequest(429, "busy: too many request bodies in flight")
        self.in_flight += reserve
        try:
            body = await self._bytes(request)
            async with self._slots:
                if len(body) <= INLINE_PARSE_BYTES:
                    return self._parse(body)
                return await asyncio.get_running_loop().run_in_executor(self._pool, self._parse, body)
        finally:
            self.in_flight -= reserve

    async def _bytes(self, request: web.Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.limit:
                raise BadRequest(413, f"body is over {self.limit} bytes, the limit of this route")
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, body: bytes) -> RunRequest:
        s = self.settings
        max_timeout_ms = int(s.request_timeout_s * 1000 * 10)
        return parse_request(
            body, self.validator, s.priority, max_timeout_ms, s.max_body_bytes, s.max_json_depth
        )
