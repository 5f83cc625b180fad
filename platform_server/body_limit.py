"""Request body limits, decided when a request's headers arrive, before its body is read.

tornado reads a whole request body into memory before any handler (or authentication) runs,
up to ``ServerApp.max_body_size`` (512 MiB). ``PlatformWebApplication`` keeps that limit only
for the routes that take uploads, and only for authenticated callers; every other body is
refused with 413 past ``PlatformApp.max_request_body_size`` without being read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_server.serverapp import ServerWebApplication
from tornado import httputil

from platform_server.errors import DatabaseUnavailable
from platform_server.handlers import WRITE_METHODS

# The reason phrases of the answers given before a handler runs.
PHRASES = {413: "Content Too Large", 503: "Service Unavailable"}

# Checks the credentials of a request whose handler has not run yet (the identity provider's);
# raises ``DatabaseUnavailable`` when they cannot be checked.
CredentialsCheck = Callable[[httputil.HTTPServerRequest], Awaitable[bool]]


def takes_uploads(handler_class: Any) -> bool:
    """Whether a handler's writes may carry bodies up to ``ServerApp.max_body_size``."""
    return bool(getattr(handler_class, "large_request_bodies", False))


class PlatformWebApplication(ServerWebApplication):
    """jupyter_server's web application, with body limits applied before bodies are read.

    jupyter_server makes its ``ServerWebApplication`` itself; ``PlatformApp.init_webapp`` turns
    it into this class and sets the two attributes below.
    """

    # Most bytes of body accepted before authentication, or on any route but uploads; 0: none.
    max_request_body_size: int = 0
    # Whether a request carries valid credentials (None: nobody may send large bodies).
    credentials_check: CredentialsCheck | None = None

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """Route the request as tornado does, through a delegate that enforces the limit."""
        inner = super().start_request(server_conn, request_conn)
        return BodyLimitDelegate(self, inner, server_conn, request_conn)

    def body_limit(self, request: httputil.HTTPServerRequest) -> int | Awaitable[int]:
        """The request's body limit in bytes (0: only tornado's own); awaitable when the
        caller's credentials must be checked first."""
        if not self.max_request_body_size:
            return 0
        declared = request.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) <= self.max_request_body_size:
            # Within the limit whoever sends it: no routing or credential check (most saves).
            return self.max_request_body_size
        if request.method in WRITE_METHODS:
            route = self.find_handler(request)
            if takes_uploads(getattr(route, "handler_class", None)):
                return self._upload_limit(request)
        return self.max_request_body_size

    async def _upload_limit(self, request: httputil.HTTPServerRequest) -> int:
        check = self.credentials_check
        if check is not None and await check(request):
            return 0
        return self.max_request_body_size


class BodyLimitDelegate(httputil.HTTPMessageDelegate):
    """Forwards a request to tornado's routing unless its body is over the limit: then
    answers 413 itself, as soon as the headers (or the chunk that crosses the limit) say so,
    and drops the body."""

    def __init__(
        self,
        app: PlatformWebApplication,
        inner: httputil.HTTPMessageDelegate,
        server_conn: object,
        request_conn: httputil.HTTPConnection,
    ) -> None:
        self.app = app
        self.inner = inner
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.limit = 0
        self.received = 0
        self.refused = False
        self.forwarded = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        """Decide the limit; refuse a declared length over it; else let tornado route."""
        assert isinstance(start_line, httputil.RequestStartLine)  # noqa: S101  (a server)
        request = httputil.HTTPServerRequest(
            connection=self.request_conn,
            server_connection=self.server_conn,
            start_line=start_line,
            headers=headers,
        )
        limit = self.app.body_limit(request)
        if isinstance(limit, int):
            return self._apply(limit, start_line, headers)
        return self._apply_later(limit, start_line, headers)

    async def _apply_later(
        self,
        limit: Awaitable[int],
        start_line: httputil.RequestStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        try:
            checked = await limit
        except DatabaseUnavailable as e:
            # Whether the caller may send this body is unknown: an outage, not a body too large.
            self._answer(503, e.message, e.reason, {"Retry-After": "5"})
            return
        forwarded = self._apply(checked, start_line, headers)
        if forwarded is not None:
            await forwarded

    def _apply(
        self, limit: int, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None:
        self.limit = limit
        declared = headers.get("Content-Length", "").strip()
        if limit and declared.isdigit() and int(declared) > limit:
            self._refuse()
            return None
        self.forwarded = True
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        """Forward a chunk, unless the body (a chunked one: no declared length) grew too big."""
        if self.refused:
            return None
        self.received += len(chunk)
        if self.limit and self.received > self.limit:
            self.inner.on_connection_close()  # the handler never sees this request
            self._refuse()
            return None
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        """The whole body arrived within the limit."""
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        """The client went away."""
        if not self.refused and self.forwarded:
            self.inner.on_connection_close()

    def _refuse(self) -> None:
        message = f"The request body is over the limit of {self.limit} bytes."
        self._answer(413, message, "too_large")

    def _answer(
        self, status: int, message: str, reason: str, extra: dict[str, str] | None = None
    ) -> None:
        # The answer goes out now; tornado then closes the connection instead of reading on.
        self.refused = True
        body = json.dumps({"message": message, "reason": reason}).encode()
        headers = httputil.HTTPHeaders(
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                "Connection": "close",
                **(extra or {}),
            }
        )
        start = httputil.ResponseStartLine("HTTP/1.1", status, PHRASES[status])
        self.request_conn.write_headers(start, headers, body)
        self.request_conn.finish()
