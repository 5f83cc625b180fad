"""A minimal Jupyter kernel WebSocket client for tests, in either wire format.

Frames are made and read with jupyter_server's own helpers, so what the agent and the platform
speak is checked against jupyter_server itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)
from tornado.httpclient import HTTPRequest
from tornado.netutil import Resolver
from tornado.websocket import WebSocketClientConnection, websocket_connect

V1 = "v1.kernel.websocket.jupyter.org"
OPENED: list[WebSocketClientConnection] = []
"""Every connection opened; tests close them (``close_opened``)."""


def close_opened() -> None:
    """Close every kernel connection a test opened."""
    while OPENED:
        OPENED.pop().close()


def new_message(
    msg_type: str, content: dict[str, Any], session: str, channel: str = "shell"
) -> dict[str, Any]:
    """A client message as JupyterLab makes one."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "tests",
            "session": session,
            "date": datetime.now(UTC).isoformat(),
            "version": "5.4",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "buffers": [],
        "channel": channel,
    }


@dataclass
class KernelSocket:
    """One kernel connection; ``messages`` keeps everything read, in order."""

    conn: WebSocketClientConnection
    protocol: str | None
    session: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        protocol: str | None = V1,
        session: str | None = None,
        headers: dict[str, str] | None = None,
        resolver: Resolver | None = None,
    ) -> KernelSocket:
        """Connect to ``.../channels`` (``session_id`` is added), offering ``protocol``."""
        session = session or uuid.uuid4().hex
        sep = "&" if "?" in url else "?"
        request = HTTPRequest(f"{url}{sep}session_id={session}", headers=headers or {})
        conn = await websocket_connect(
            request,
            subprotocols=[protocol] if protocol else None,
            resolver=resolver,
            max_message_size=1 << 28,
        )
        OPENED.append(conn)
        assert conn.selected_subprotocol == protocol
        return cls(conn, protocol, session)

    async def send(self, message: dict[str, Any]) -> None:
        """Send a message in the socket's format."""
        if self.protocol == V1:
            parts = [
                json.dumps(message[key]).encode()
                for key in ("header", "parent_header", "metadata", "content")
            ]
            frame = serialize_msg_to_ws_v1(parts + list(message["buffers"]), message["channel"])
            await self.conn.write_message(frame, binary=True)
        elif message["buffers"]:
            await self.conn.write_message(serialize_binary_message(message), binary=True)
        else:
            await self.conn.write_message(json.dumps({k: v for k, v in message.items()}))

    async def request(
        self, msg_type: str, content: dict[str, Any], channel: str = "shell", **extra: Any
    ) -> str:
        """Send a request; return its msg_id."""
        message = new_message(msg_type, content, self.session, channel)
        message.update(extra)
        await self.send(message)
        return str(message["header"]["msg_id"])

    async def read(self, within: float = 30) -> dict[str, Any] | None:
        """The next message, decoded, or None once the socket is closed."""
        frame = await asyncio.wait_for(self.conn.read_message(), within)
        if frame is None:
            return None
        if self.protocol == V1:
            assert isinstance(frame, bytes), "v1 frames are binary"
            channel, parts = deserialize_msg_from_ws_v1(frame)
            message = {
                key: json.loads(part)
                for key, part in zip(
                    ("header", "parent_header", "metadata", "content"), parts, strict=False
                )
            }
            message["buffers"] = [bytes(p) for p in parts[4:]]
            message["channel"] = channel
        elif isinstance(frame, bytes):
            message = deserialize_binary_message(frame)
            message["buffers"] = [bytes(b) for b in message["buffers"]]
        else:
            message = json.loads(frame)
            assert message["msg_id"] == message["header"]["msg_id"]
            assert message["msg_type"] == message["header"]["msg_type"]
        self.messages.append(message)
        return message

    async def until(self, predicate: Any, within: float = 60) -> dict[str, Any]:
        """Read until a message satisfies ``predicate``; return it."""
        deadline = time.monotonic() + within
        while True:
            message = await self.read(max(0.01, deadline - time.monotonic()))
            assert message is not None, f"closed: {self.conn.close_code} {self.conn.close_reason}"
            if predicate(message):
                return message

    async def execute(self, code: str, within: float = 60, **options: Any) -> Reply:
        """Run code; collect its IOPub output until idle, and its execute_reply."""
        msg_id = await self.request("execute_request", {"code": code, **options})
        reply = Reply()
        deadline = time.monotonic() + within
        while reply.shell is None or not reply.idle:
            message = await self.read(max(0.01, deadline - time.monotonic()))
            assert message is not None, "the socket closed"
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            reply.add(message)
        return reply

    def close(self) -> None:
        self.conn.close()


@dataclass
class Reply:
    """What one execute_request produced."""

    shell: dict[str, Any] | None = None
    idle: bool = False
    stdout: str = ""
    stderr: str = ""
    results: list[str] = field(default_factory=list)
    displays: list[dict[str, Any]] = field(default_factory=list)  # display_data's data
    errors: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)

    def add(self, message: dict[str, Any]) -> None:
        kind = message["header"]["msg_type"]
        content = message["content"]
        if message["channel"] == "shell":
            self.shell = content
        elif kind == "status":
            self.states.append(content["execution_state"])
            self.idle = content["execution_state"] == "idle"
        elif kind == "stream":
            if content["name"] == "stdout":
                self.stdout += content["text"]
            else:
                self.stderr += content["text"]
        elif kind == "execute_result":
            self.results.append(content["data"]["text/plain"])
        elif kind == "display_data":
            self.displays.append(content["data"])
        elif kind == "error":
            self.errors.append(content["ename"])
