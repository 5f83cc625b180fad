"""``WS /api/packages``: the platform's connection for the package index and for what the
workspace's environment holds.

The sandbox has no network, so the platform opens this socket (authenticated with the agent's
token, like every agent route) and the agent sends its requests the other way:

- agent → platform: ``{"type": "request", "id", "method", "path", "headers"}`` for each request
  pip makes to the loopback index (``kernel_image.package_relay``); ``{"type": "cancel", "id"}``
  when pip goes away; ``{"type": "environment", "seq", "installed": [dist...], "removed":
  [name...]}`` when the workspace's venv changed (``EnvironmentRecorder``).
- platform → agent: ``{"type": "response", "id", "status", "reason", "headers"}``, then binary
  frames (a 4-byte big-endian id, then body bytes), then ``{"type": "end", "id"}``, or
  ``{"type": "abort", "id"}`` when the body cannot be completed (the client's connection is then
  cut);
  ``{"type": "ack", "seq"}`` once an environment change is stored.

Several platform connections may be open at once (one starting the sandbox, one holding its
file sync); requests go to the newest, and unacknowledged changes are sent again on the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.websocket import WebSocketClosedError

from kernel_image.auth import AgentSocket

log = logging.getLogger("kernel_image.packages")

ID = struct.Struct(">I")


class NoPlatform(Exception):
    """No platform connection is open to carry a request."""


@dataclass
class Reply:
    """A relayed request's answer as it arrives: head first, then body chunks, then None.
    ``broken``: the connection carrying it closed (the reader checks after every chunk)."""

    head: asyncio.Future[dict[str, Any]]
    chunks: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(64))
    broken: bool = False


class PackageChannel:
    """The platform connections, the requests in flight over them, and the environment changes
    not yet acknowledged."""

    def __init__(self) -> None:
        self.sockets: list[PackageSocket] = []
        self.replies: dict[int, tuple[PackageSocket, Reply]] = {}
        self.unacked: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self.on_attach: Callable[[], None] | None = None

    def attach(self, socket: PackageSocket) -> None:
        """A new platform connection: it carries new requests and the unacknowledged changes."""
        self.sockets.append(socket)
        for message in self.unacked.values():
            socket.send(message)

    def detach(self, socket: PackageSocket) -> None:
        """A connection closed: its requests in flight fail."""
        if socket in self.sockets:
            self.sockets.remove(socket)
        for request_id, (owner, reply) in list(self.replies.items()):
            if owner is socket:
                self._fail(request_id, reply)

    async def request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, Reply]:
        """Send a request to the platform; its id and where its answer arrives."""
        if not self.sockets:
            raise NoPlatform
        socket = self.sockets[-1]
        request_id = next(self._ids)
        reply = Reply(asyncio.get_running_loop().create_future())
        self.replies[request_id] = (socket, reply)
        message = {"type": "request", "id": request_id, "method": method, "path": path}
        socket.send({**message, "headers": headers})
        return request_id, reply

    def cancel(self, request_id: int) -> None:
        """The client went away: tell the platform to stop sending."""
        entry = self.replies.pop(request_id, None)
        if entry is not None:
            entry[0].send({"type": "cancel", "id": request_id})

    def finished(self, request_id: int) -> None:
        """The answer was delivered whole."""
        self.replies.pop(request_id, None)

    def report(self, change: dict[str, Any]) -> None:
        """Send an environment change, and again on every new connection until acknowledged."""
        seq = next(self._seq)
        message = {"type": "environment", "seq": seq, **change}
        self.unacked[seq] = message
        if self.sockets:
            self.sockets[-1].send(message)

    def has_unreported(self) -> bool:
        """Whether environment changes wait for the platform."""
        return bool(self.unacked)

    async def received(self, socket: PackageSocket, message: str | bytes) -> None:
        """A frame from the platform."""
        if isinstance(message, bytes):
            (request_id,) = ID.unpack_from(message)
            entry = self.replies.get(request_id)
            if entry is not None:
                await entry[1].chunks.put(message[ID.size :])
            return
        frame = json.loads(message)
        kind = frame.get("type")
        if kind == "ack":
            for seq in [s for s in self.unacked if s <= frame["seq"]]:
                del self.unacked[seq]
            return
        entry = self.replies.get(frame.get("id", -1))
        if entry is None:
            return
        reply = entry[1]
        if kind == "response" and not reply.head.done():
            reply.head.set_result(frame)
        elif kind == "end":
            await reply.chunks.put(None)
        elif kind == "abort":
            self._fail(frame["id"], reply)

    def _fail(self, request_id: int, reply: Reply) -> None:
        self.replies.pop(request_id, None)
        reply.broken = True
        if not reply.head.done():
            reply.head.set_exception(NoPlatform())
        elif not reply.chunks.full():
            reply.chunks.put_nowait(b"")  # wakes a waiting reader, which then sees ``broken``


class PackageSocket(AgentSocket):
    """One platform connection to the package channel."""

    @property
    def channel(self) -> PackageChannel:
        """The agent's package channel."""
        channel: PackageChannel = self.settings["package_channel"]
        return channel

    def prepare(self) -> None:
        """Authenticate before the upgrade."""
        self.check_upgrade()

    def open(self, *args: str, **kwargs: str) -> None:
        """Carry requests from now on."""
        self.channel.attach(self)

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON frame (dropped if the socket has closed: ``on_close`` handles it)."""
        with contextlib.suppress(WebSocketClosedError):
            self.write_message(json.dumps(message))

    async def on_message(self, message: str | bytes) -> None:
        """A response, body bytes, or an acknowledgement; a malformed frame closes."""
        try:
            await self.channel.received(self, message)
        except (ValueError, KeyError, TypeError, struct.error):
            self.close(1007, "malformed package channel frame")

    def on_close(self) -> None:
        """Requests in flight over this connection fail; the others go on."""
        self.channel.detach(self)
