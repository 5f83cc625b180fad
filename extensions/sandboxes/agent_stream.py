"""A WebSocket to an agent as a plain byte stream: the upgrade, then the connection itself.

A relay that passes frames on as bytes needs the connection that ``websocket_connect`` keeps to
itself (its frame reader starts as soon as the upgrade is answered). The upgrade here is the one
every WebSocket client sends, with the agent's token; no extension is offered, so the frames
that follow are plain RFC 6455 frames.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket

from tornado.httputil import HTTPHeaders, HTTPInputError, parse_response_start_line
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError
from tornado.tcpclient import TCPClient

from extensions.sandboxes.agent_client import (
    UNIX_HOST,
    AgentClient,
    AgentError,
    AgentUnresponsive,
    error_message,
)
from extensions.sandboxes.spawners.base import AgentEndpoint

MAX_ANSWER_BYTES = 64 * 1024
"""The most bytes of an answer's head, or of a refusal's body, read from the agent."""
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class AgentRefused(AgentError):
    """The agent answered the upgrade with an HTTP status (``status``) instead of accepting it."""


async def connect(endpoint: AgentEndpoint) -> IOStream:
    """A connected stream to the agent, over its Unix socket or TCP (no delay on small writes)."""
    if endpoint.unix_socket is not None:
        stream = IOStream(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        await stream.connect(endpoint.unix_socket)
        return stream
    stream = await TCPClient().connect(str(endpoint.host), int(endpoint.port or 0))
    stream.set_nodelay(True)
    return stream


def upgrade_request(host: str, path: str, token: str, key: str) -> bytes:
    """The HTTP request that opens a WebSocket at ``path`` (already URL-quoted) with the
    agent's token."""
    if any(c.isspace() for c in path):
        msg = f"not a quoted URL path: {path!r}"
        raise ValueError(msg)
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Authorization: token {token}\r\n"
        "\r\n"
    ).encode()


def accept_value(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server answers to ``key`` (RFC 6455 section 4.2.2)."""
    digest = hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest()  # noqa: S324 (the protocol's)
    return base64.b64encode(digest).decode()


async def _upgrade(stream: IOStream, endpoint: AgentEndpoint, path: str, token: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    host = UNIX_HOST if endpoint.host is None else f"{endpoint.host}:{endpoint.port}"
    await stream.write(upgrade_request(host, path, token, key))
    head = (await stream.read_until(b"\r\n\r\n", max_bytes=MAX_ANSWER_BYTES)).decode("latin-1")
    first_line, _, rest = head.partition("\r\n")
    status = parse_response_start_line(first_line).code
    headers = HTTPHeaders.parse(rest)
    if status != 101:
        length = min(int(headers.get("Content-Length", "0") or 0), MAX_ANSWER_BYTES)
        body = await stream.read_bytes(length) if length else b""
        msg = f"The sandbox's agent answered {status} to the WebSocket at {path}"
        raise AgentRefused(msg, status, error_message(body))
    if headers.get("Sec-WebSocket-Accept") != accept_value(key):
        msg = "The sandbox's agent accepted the WebSocket with a wrong Sec-WebSocket-Accept."
        raise AgentError(msg)
    if headers.get("Sec-WebSocket-Extensions"):
        msg = "The sandbox's agent accepted the WebSocket with an extension nobody offered."
        raise AgentError(msg)


async def open_agent_stream(client: AgentClient, token: str, path: str) -> IOStream:
    """Open the WebSocket at ``path`` on ``client``'s agent (``token`` is its token) and
    return its connection, upgraded.

    ``AgentRefused`` if the agent answers with a status, ``AgentUnresponsive`` if it does not
    answer within the client's ``timeout``, ``AgentError`` if it cannot be reached.
    """
    stream: IOStream | None = None
    try:
        async with asyncio.timeout(client.timeout):
            stream = await connect(client.endpoint)
            await _upgrade(stream, client.endpoint, path, token)
    except BaseException as e:
        if stream is not None:
            stream.close()
        # TimeoutError first: it is an OSError too.
        if isinstance(e, TimeoutError):
            msg = f"The sandbox's agent did not answer the WebSocket at {path} in time."
            raise AgentUnresponsive(msg) from e
        if isinstance(e, OSError | StreamClosedError):
            msg = f"The sandbox's agent cannot be reached: {e}"
            raise AgentError(msg) from e
        if isinstance(e, HTTPInputError | UnsatisfiableReadError | ValueError):
            msg = f"The sandbox's agent answered the WebSocket at {path} with no HTTP answer."
            raise AgentError(msg) from e
        raise
    return stream
