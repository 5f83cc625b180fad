"""``WS /w/<uuid>/api/collaboration/text/<path>``: a text file's shared Y.js document.

The standard y-websocket protocol (sync steps 1 and 2, updates, awareness) on a ``Y.Text``
named "source", so y-websocket's ``WebsocketProvider`` talks to it unchanged; plus the two
messages of ``protocol.py`` (save now, save status). Checked before the upgrade, as HTTP
answers: the user (401), the Origin (403), the workspace (404), the path (400), the file
(404 when missing, 400 when not a UTF-8 text file, 413 when too large).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from pycrdt import YMessageType
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from extensions.collaboration.protocol import (
    SAVE_REQUEST,
    InvalidFrame,
    parse_frame,
    read_awareness,
)
from extensions.collaboration.room import DocumentRoom
from extensions.collaboration.rooms import Collaboration
from extensions.sandboxes.access_watch import AccessWatch
from extensions.sandboxes.handlers import socket_access
from extensions.workspaces.api_edge import api_path
from extensions.workspaces.roles import Action
from platform_server.errors import DomainError, PlatformError
from platform_server.handlers import WORKSPACE_ROUTE, write_json_error

# WebSocket close codes: 1003 unsupported data, 1007 invalid data, 1008 policy violation,
# 1009 too big.
UNSUPPORTED_DATA, INVALID_DATA, POLICY_VIOLATION, TOO_BIG = 1003, 1007, 1008, 1009
MAX_AWARENESS_BYTES = 64 * 1024
"""The largest awareness frame (a name, a colour and a selection take a few hundred bytes):
every client of the document receives each one, and the room keeps the last."""
MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
"""The largest file shared (the IDE edits no larger file); also the largest frame."""


class SocketChannel:
    """One client's Tornado socket as pycrdt's ``Channel``: the frames its handler put."""

    def __init__(self, handler: WebSocketHandler, path: str) -> None:
        self._handler = handler
        self._path = path
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()

    @property
    def path(self) -> str:
        """The document's path (pycrdt logs it)."""
        return self._path

    def __aiter__(self) -> SocketChannel:
        return self

    async def __anext__(self) -> bytes:
        frame = await self._frames.get()
        if frame is None:
            raise StopAsyncIteration
        return frame

    async def recv(self) -> bytes:
        """The next frame."""
        return await self.__anext__()

    def put(self, frame: bytes | None) -> None:
        """Hand a checked frame to the room (None: the socket closed)."""
        self._frames.put_nowait(frame)

    async def send(self, message: bytes) -> None:
        """Send a frame; a closed socket drops it (the room forgets the client soon)."""
        with contextlib.suppress(WebSocketClosedError):
            await self._handler.write_message(message, binary=True)

    def close(self, code: int, reason: str) -> None:
        """Close the client's socket."""
        self._handler.close(code, reason)


class CollaborationHandler(WebSocketMixin, AccessWatch, JupyterHandler):
    """One client of a shared text document. Every role may join and show its presence; a
    viewer's document updates and save requests are dropped (the socket stays open: its
    y-websocket client sends its state in sync step 2 whatever it is)."""

    auth_resource = "contents"
    room: DocumentRoom
    writer = False
    channel: SocketChannel | None = None
    _serving: asyncio.Task[None] | None = None

    @property
    def max_message_size(self) -> int:
        """A whole document travels in one sync message."""
        return 2 * MAX_DOCUMENT_BYTES

    @property
    def collaboration(self) -> Collaboration:
        """The collaboration service."""
        return cast(Collaboration, self.settings["collaboration"])

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A refused upgrade answers JSON, as every API route does."""
        write_json_error(self, status_code, kwargs.get("exc_info"))

    async def get(self, workspace_id: str, path: str) -> None:
        """Check the user, workspace and file, open the file's room, accept the upgrade."""
        access = await socket_access(self, workspace_id, Action.READ)
        self.access, self.writer = access, access.role.allows(Action.CHANGE)
        ws = access.workspace_id
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            msg = "WebSockets from another site's pages are refused."
            raise PlatformError(403, msg, reason="forbidden")
        path = api_path(path)
        manager = self.collaboration.contents(ws)
        model = await manager.get(path, content=False, type="file")
        if (model.get("size") or 0) > MAX_DOCUMENT_BYTES:
            msg = f"{path} is too large to edit together (over {MAX_DOCUMENT_BYTES} bytes)."
            raise PlatformError(413, msg, reason="too_large")
        # Reads the text: 400 for a file that is not UTF-8.
        await manager.get(path, content=True, type="file", format="text")
        try:
            self.room = await self.collaboration.room(ws, path)
        except DomainError as e:  # the file went meanwhile
            raise e.to_http() from e
        self.channel = SocketChannel(self, path)
        await cast(Any, super().get(workspace_id, path))

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Join the room: it starts with sync step 1."""
        super().open(*args, **kwargs)
        self.watch_access()
        assert self.channel is not None  # noqa: S101  (set by get before the upgrade)
        self._awareness_clients: dict[int, int] = {}
        self._serving = asyncio.create_task(self.room.serve(self.channel))

    def on_message(self, message: str | bytes) -> None:
        """Check a frame, then hand it to the room; close on anything that is not one."""
        if self.channel is None:
            return
        if isinstance(message, str):
            self.close(UNSUPPORTED_DATA, "Frames are binary y-websocket messages.")
            return
        if message[:1] == bytes([YMessageType.AWARENESS]) and len(message) > MAX_AWARENESS_BYTES:
            self.close(TOO_BIG, f"An awareness frame is at most {MAX_AWARENESS_BYTES} bytes.")
            return
        try:
            frame = parse_frame(message)
            presence = (
                read_awareness(frame.payload) if frame.kind == YMessageType.AWARENESS else None
            )
        except InvalidFrame as e:
            self.close(INVALID_DATA, f"Invalid frame: {e}.")
            return
        if presence is not None:
            if not self.room.names_allowed(presence.names, self.current_user.username):
                self.close(POLICY_VIOLATION, "Presence shows your own username only.")
                return
            self._awareness_clients.update(presence.clocks)
        if not self.writer and (frame.changes_document or frame.kind == SAVE_REQUEST):
            return
        if frame.kind == YMessageType.AWARENESS:
            self.room.share_awareness(message)
        self.channel.put(message)

    def on_close(self) -> None:
        """Leave the room; the client's presence goes with it, on every replica."""
        if self.channel is not None:
            self.channel.put(None)
            if self._awareness_clients and not self.room.closed:
                self.room.client_left(self._awareness_clients)
        super().on_close()


default_handlers = [
    (rf"{WORKSPACE_ROUTE}/api/collaboration/text/(?P<path>.+)", CollaborationHandler),
]
