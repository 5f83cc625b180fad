"""Talking to one sandbox's agent: HTTP and WebSocket, over a Unix socket or TCP, with its token."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.netutil import Resolver
from tornado.simple_httpclient import HTTPTimeoutError, SimpleAsyncHTTPClient
from tornado.websocket import WebSocketClientConnection, websocket_connect

from extensions.sandboxes.spawners.base import AgentEndpoint

# The host name used in URLs of Unix-socket agents; the resolver below maps it to the socket.
UNIX_HOST = "agent.sandbox.invalid"
# tornado's code for an answer that never came (a timeout, or the connection lost).
NO_ANSWER = 599

T = TypeVar("T")


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

    def __init__(
        self, message: str, status: int | None = None, agent_message: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        # What the agent said (the ``message`` of its JSON error), meant for the user.
        self.agent_message = agent_message


class AgentUnresponsive(AgentError):
    """The agent accepted the connection but did not answer in time (it hangs, or is stopped):
    unlike a refused connection, the sandbox may still come back."""


class AgentClient:
    """HTTP and WebSocket access to one agent; every request carries its token.

    ``timeout`` bounds how long the agent may leave a request unanswered: a request allowed
    to take longer (a kernel restart, a large upload) goes on only while the agent keeps
    answering a health check within ``timeout`` meanwhile. An agent that answers neither
    raises ``AgentUnresponsive``.
    """

    def __init__(self, endpoint: AgentEndpoint, token: str, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
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
        # Health checks get connections of their own: requests stuck in a hung agent hold
        # the other client's connections (and queue what follows them) until they time out.
        self._probe: AsyncHTTPClient = SimpleAsyncHTTPClient(
            force_instance=True, resolver=self._resolver
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
        request_timeout: float | None = None,
        expect: tuple[int, ...] = (200, 201, 204),
        probe: bool = False,
    ) -> HTTPResponse:
        """Send one request; ``AgentError`` if unreachable or the status is unexpected,
        ``AgentUnresponsive`` if the agent does not answer. ``request_timeout`` (seconds,
        default ``timeout``) may exceed ``timeout`` for requests that take long. A ``probe``
        goes on the health checks' own connections."""
        http = self._probe if probe else self._http
        request_timeout = request_timeout or self.timeout
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
            connect_timeout=min(request_timeout, self.timeout),
            allow_nonstandard_methods=True,
        )
        try:
            response = await self._answered(http.fetch(request, raise_error=False), request_timeout)
        except OSError as e:
            msg = f"The sandbox's agent cannot be reached: {e.strerror or e}"
            raise AgentError(msg) from e
        except HTTPClientError as e:
            # raise_error=False still raises when no answer came at all (tornado's 599).
            raise no_answer(e) from e
        if response.code == NO_ANSWER:
            msg = f"The sandbox's agent cannot be reached: {response.error}"
            raise AgentError(msg)
        if response.code not in expect:
            detail = (response.body or b"")[:300].decode(errors="replace")
            msg = f"The sandbox's agent answered {response.code} to {method} {path}: {detail}"
            raise AgentError(msg, response.code, error_message(response.body))
        return response

    async def _answered(self, pending: Awaitable[T], allowed: float) -> T:
        """``pending``'s result. When it may take longer than ``timeout`` (``allowed``), the
        agent must answer a health check within ``timeout`` for every ``timeout`` it takes,
        else ``AgentUnresponsive`` (and ``pending`` is given up)."""
        if allowed <= self.timeout:
            return await pending
        task = asyncio.ensure_future(pending)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.timeout)
                if done:
                    return task.result()
                await self.health(request_timeout=self.timeout)
        finally:
            if not task.done():
                task.cancel()

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request whose answer is JSON."""
        response = await self.request(method, path, **kwargs)
        return json.loads(response.body) if response.body else None

    async def health(self, request_timeout: float = 2.0) -> dict[str, Any]:
        """The agent's health report."""
        response = await self.request(
            "GET", "/api/health", request_timeout=request_timeout, expect=(200,), probe=True
        )
        report: dict[str, Any] = json.loads(response.body)
        return report

    async def websocket(
        self,
        path: str,
        *,
        max_message_size: int = 1 << 20,
        subprotocols: list[str] | None = None,
        handshake_timeout: float | None = None,
    ) -> WebSocketClientConnection:
        """Open a WebSocket to the agent (terminals, kernels, file sync). The handshake may
        take ``handshake_timeout`` seconds (default ``timeout``) while the agent answers
        health checks meanwhile (see ``request``)."""
        scheme_url = "ws" + self.base_url[len("http") :]
        allowed = handshake_timeout or self.timeout
        request = HTTPRequest(
            scheme_url + path,
            headers=dict(self._auth),
            connect_timeout=min(allowed, self.timeout),
            request_timeout=allowed,
        )
        try:
            return await self._answered(
                websocket_connect(
                    request,
                    resolver=self._resolver,
                    max_message_size=max_message_size,
                    subprotocols=subprotocols,
                ),
                allowed,
            )
        except OSError as e:
            msg = f"The sandbox's agent cannot be reached: {e.strerror or e}"
            raise AgentError(msg) from e
        except HTTPClientError as e:
            if e.code != NO_ANSWER:
                raise  # the agent refused the socket with an HTTP status (the caller's to map)
            raise no_answer(e) from e

    def close(self) -> None:
        """Release the HTTP clients."""
        self._http.close()
        self._probe.close()


def error_message(body: bytes | None) -> str | None:
    """The ``message`` of an agent's JSON error answer, if it has one."""
    try:
        message = json.loads(body or b"")["message"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None


def no_answer(error: HTTPClientError) -> AgentError:
    """The error of a request that got no answer: ``AgentUnresponsive`` after a timeout (the
    agent took the connection but never answered), ``AgentError`` when the connection broke."""
    if isinstance(error, HTTPTimeoutError):
        return AgentUnresponsive(f"The sandbox's agent did not answer: {error.message}")
    return AgentError(f"The sandbox's agent cannot be reached: {error.message}")
