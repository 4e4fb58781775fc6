"""Bearer-token authentication of the gateway.

Tokens come from a directory (``AGENTSCALE_GATEWAY_TOKENS_DIR``; the operator mounts a Secret there): every
regular file whose name does not start with ``.`` holds one token (surrounding whitespace stripped), so
several tokens can be valid at once and rotate by adding a key to the Secret and later removing the old one.
The file name is the client's name: admission's fair share and the logs use it, never the token. Tokens
shorter than ``MIN_TOKEN_CHARS`` are ignored with a warning. The directory is read again every few seconds
(the gateway calls :meth:`TokenStore.reload` off the event loop), so a rotated Secret takes effect without a
restart. A presented token is compared with every known token by ``hmac.compare_digest``.

With no directory configured the gateway runs open and says so once in its log; a configured directory that
holds no usable token refuses every request (fail closed). Health, readiness and the OpenAPI description are
never authenticated; metrics are served on their own port."""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
CHALLENGE = 'Bearer realm="agentscale"'
# who sent the request being handled: token:<file name>, or addr:<peer address> when the gateway runs open
# (set by the gateway's middleware, read by admission for the fair share)
CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("gateway_client", default="?")


class TokenStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._tokens: list[tuple[str, bytes]] = []  # (client name, token)
        self._seen: tuple[str, ...] | None = None  # what the last reload found, to log changes only

    def reload(self) -> int:
        """Read the token files again; returns how many tokens are usable. Blocking (file I/O)."""
        tokens: list[tuple[str, bytes]] = []
        problems: list[str] = []
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError as e:
            entries = []
            problems.append(f"cannot list {self.directory}: {e.strerror}")
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():  # a Secret volume's ..data links
                continue
            try:
                token = Path(entry.path).read_bytes().strip()
            except OSError as e:
                problems.append(f"{entry.name}: {e.strerror}")
                continue
            if len(token) < MIN_TOKEN_CHARS:
                problems.append(f"{entry.name}: token shorter than {MIN_TOKEN_CHARS} characters, ignored")
                continue
            tokens.append((entry.name, token))
        seen = tuple(name for name, _ in tokens) + tuple(problems)
        if seen != self._seen:
            self._seen = seen
            for p in problems:
                log.warning("gateway tokens: %s", p)
            if tokens:
                log.info("gateway tokens: %d from %s (%s)", len(tokens), self.directory, ", ".join(seen))
            else:
                log.error("gateway tokens: none usable in %s: every request is refused", self.directory)
        self._tokens = tokens
        return len(tokens)

    def client_of(self, authorization: str | None) -> str | None:
        """The client name of a valid ``Authorization: Bearer <token>`` header, or None."""
        if not authorization:
            return None
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return None
        given = presented.strip().encode("utf-8", "surrogateescape")
        found: str | None = None
        for name, token in self._tokens:  # compare with all, so the time does not say which one matched
            if hmac.compare_digest(given, token) and found is None:
                found = name
        return found


def token_store(directory: str) -> TokenStore | None:
    """The store for a configured directory (loaded once), or None: the gateway runs open."""
    if not directory:
        log.warning(
            "gateway authentication is OFF: no AGENTSCALE_GATEWAY_TOKENS_DIR; anyone who reaches the "
            "gateway can submit and read runs"
        )
        return None
    store = TokenStore(directory)
    store.reload()
    return store


def authenticate(store: TokenStore | None, request: web.Request) -> str | None:
    """The client's name for admission (``token:<file>``, or ``addr:<peer>`` when open), None if refused."""
    if store is None:
        return f"addr:{request.remote or '?'}"
    name = store.client_of(request.headers.get("Authorization"))
    return None if name is None else f"token:{name}"


def unauthorized(request: web.Request) -> web.Response:
    """401 with the challenge (RFC 6750: ``error="invalid_token"`` when a credential was presented)."""
    challenge = CHALLENGE + (', error="invalid_token"' if "Authorization" in request.headers else "")
    return web.json_response(
        {"error": "a valid 'Authorization: Bearer <token>' header is required"},
        status=401,
        headers={"WWW-Authenticate": challenge},
    )
