"""Talking to one sandbox's agent: HTTP and WebSocket, over a Unix socket or TCP, with its token."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.netutil import Resolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.websocket import WebSocketClientConnection, websocket_connect

from extensions.sandboxes.spawners.base import AgentEndpoint

# The host name used in URLs of Unix-socket agents; the resolver below maps it to the socket.
UNIX_HOST = "agent.sandbox.invalid"


class UnixSocketResolver(Resolver):
    """Resolves ``UNIX_HOST`` to one agent's Unix socket, so tornado can speak HTTP over it."""

    def initialize(self, socket_path: str) -> None:
        """Remember the socket path."""
        self.socket_path = socket_path

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        """Every lookup answers the socket: this resolver serves exactly one agent."""
        return [(socket.AF_UNIX, self.socket_path)]

    def close(self) -> None:
        """Nothing to release."""


class AgentError(Exception):
    """The agent could not be reached or answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AgentClient:
    """HTTP and WebSocket access to one agent; every request carries its token."""

    def __init__(self, endpoint: AgentEndpoint, token: str) -> None:
        self.endpoint = endpoint
        self._auth = {"Authorization": f"token {token}"}
        self._resolver: Resolver | None = None
        if endpoint.unix_socket is not None:
            self._resolver = UnixSocketResolver(socket_path=endpoint.unix_socket)
            self.base_url = f"http://{UNIX_HOST}"
        else:
            self.base_url = f"http://{endpoint.host}:{endpoint.port}"
        self._http: AsyncHTTPClient = SimpleAsyncHTTPClient(
            force_instance=True, resolver=self._resolver, max_body_size=1 << 31
        )

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        json_body: Any = None,
        body_producer: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]
        | None = None,
        request_timeout: float = 30.0,
        expect: tuple[int, ...] = (200, 201, 204),
    ) -> HTTPResponse:
        """Send one request; ``AgentError`` if unreachable or the status is unexpected."""
        headers = dict(self._auth)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        request = HTTPRequest(
            self.base_url + path,
            method=method,
            headers=headers,
            body=body
            if body is not None or body_producer is not None
            else (b"" if method in {"POST", "PUT"} else None),
            body_producer=cast(Any, body_producer),
            request_timeout=request_timeout,
            connect_timeout=min(request_timeout, 5.0),
            allow_nonstandard_methods=True,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except OSError as e:
            msg = f"The sandbox's agent cannot be reached: {e.strerror or e}"
            raise AgentError(msg) from e
        if response.code == 599:
            msg = f"The sandbox's agent cannot be reached: {response.error}"
            raise AgentError(msg)
        if response.code not in expect:
            detail = (response.body or b"")[:300].decode(errors="replace")
            msg = f"The sandbox's agent answered {response.code} to {method} {path}: {detail}"
            raise AgentError(msg, response.code)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request whose answer is JSON."""
        response = await self.request(method, path, **kwargs)
        return json.loads(response.body) if response.body else None

    async def health(self, request_timeout: float = 2.0) -> dict[str, Any]:
        """The agent's health report."""
        report: dict[str, Any] = await self.json(
            "GET", "/api/health", request_timeout=request_timeout
        )
        return report

    async def websocket(
        self,
        path: str,
        *,
        max_message_size: int = 1 << 20,
        subprotocols: list[str] | None = None,
        handshake_timeout: float | None = None,
    ) -> WebSocketClientConnection:
        """Open a WebSocket to the agent (terminals, kernels, file sync)."""
        scheme_url = "ws" + self.base_url[len("http") :]
        request = HTTPRequest(
            scheme_url + path,
            headers=dict(self._auth),
            connect_timeout=5.0,
            request_timeout=handshake_timeout,
        )
        try:
            return await websocket_connect(
                request,
                resolver=self._resolver,
                max_message_size=max_message_size,
                subprotocols=subprotocols,
            )
        except OSError as e:
            msg = f"The sandbox's agent cannot be reached: {e.strerror or e}"
            raise AgentError(msg) from e

    def close(self) -> None:
        """Release the HTTP client."""
        self._http.close()
