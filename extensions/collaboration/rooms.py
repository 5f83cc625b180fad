"""``Collaboration``: this replica's open documents, and the notifications that join replicas.

One room per (workspace, path) per replica, made when its first client comes and closed
``close_delay`` seconds after its last one left. Each replica LISTENs on one connection to
the ``collaboration`` channel: stored updates (``{"doc", "seq"}``) and awareness messages of
other replicas' clients (``{"doc", "replica", "awareness"}``), handed to the room of ``doc``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from traitlets import Any as AnyTrait
from traitlets import Float, Instance
from traitlets.config import LoggingConfigurable

from extensions.collaboration import store
from extensions.collaboration.room import DocumentRoom
from extensions.workspaces.contents import PostgresContentsManager
from extensions.workspaces.manager import Workspaces
from platform_server.db import Database

# Seconds between attempts to LISTEN again after the connection failed.
RETRY_SECONDS = 1.0


class Collaboration(LoggingConfigurable):
    """The shared documents open on this replica."""

    save_delay = Float(
        1.0,
        min=0.0,
        help="Seconds after the last change to a shared document before its text is saved "
        "to the file (Ctrl+S in the IDE saves at once). 0 saves after every change.",
    ).tag(config=True)

    close_delay = Float(
        10.0,
        min=0.0,
        help="Seconds a document's room stays open after its last client left (a reload "
        "finds it loaded); it is saved and closed then. 0 closes it at once.",
    ).tag(config=True)

    db = Instance(Database)
    workspaces = Instance(Workspaces)
    file_events = AnyTrait(
        help="The replica's EventHub (extensions/sandboxes/events.py), told to PlatformApp's "
        "services as ``sandboxes.events`` (not config)."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replica = uuid.uuid4()
        self.rooms: dict[tuple[uuid.UUID, str], DocumentRoom] = {}
        self._by_key: dict[str, DocumentRoom] = {}
        self._opening: dict[tuple[uuid.UUID, str], asyncio.Task[DocumentRoom]] = {}
        self._closing: dict[tuple[uuid.UUID, str], asyncio.Task[None]] = {}
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def contents(self, workspace_id: uuid.UUID) -> PostgresContentsManager:
        """The contents manager of a workspace (saves go the way a PUT's do)."""
        return self.workspaces.contents_manager(workspace_id)

    def subscribe_files(
        self, workspace_id: uuid.UUID, subscriber: Callable[[dict[str, Any]], None]
    ) -> Callable[[], None]:
        """Hear the workspace's file events; returns the unsubscribe."""
        return self.file_events.subscribe(workspace_id, subscriber)  # type: ignore[no-any-return]

    # --- rooms -----------------------------------------------------------------------------

    async def room(self, workspace_id: uuid.UUID, path: str) -> DocumentRoom:
        """The open room of a file, made (and loaded) if there is none."""
        key = (workspace_id, path)
        room = self.rooms.get(key)
        if room is not None and not room.closed:
            room.schedule_close()
            return room
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.create_task(self._open(key))
            self._opening[key] = opening
            opening.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(opening)

    async def _open(self, key: tuple[uuid.UUID, str]) -> DocumentRoom:
        closing = self._closing.get(key)
        if closing is not None:
            # The final save of the previous room comes first: the new one loads after it.
            await asyncio.gather(closing, return_exceptions=True)
        room = DocumentRoom(self, *key)
        await room.open()
        self.rooms[key] = room
        self._by_key[store.document_key(*key)] = room
        self.log.info("collaboration %s | opened the room of a file", key[0])
        return room

    def close_room(self, room: DocumentRoom, *, save: bool = True) -> None:
        """Close a room in the background (its clients are disconnected first)."""
        key = (room.workspace_id, room.path)
        if room.closed or self.rooms.get(key) is not room:
            return
        room.closed = True
        del self.rooms[key]
        self._by_key.pop(store.document_key(*key), None)
        for client in list(room.clients):
            client.close(1001, "The file's room closed.")
        task = asyncio.create_task(self._close(room, save=save))
        self._closing[key] = task
        task.add_done_callback(lambda _: self._closing.pop(key, None))

    async def _close(self, room: DocumentRoom, *, save: bool) -> None:
        try:
            await room.close(save=save)
        except Exception:
            self.log.exception("%r | closing failed", room)

    async def close_all(self) -> None:
        """Save and close every room (the replica stops)."""
        for room in list(self.rooms.values()):
            self.close_room(room)
        await asyncio.gather(*self._closing.values(), return_exceptions=True)

    # --- notifications ---------------------------------------------------------------------

    def start(self) -> None:
        """Begin listening (reconnecting by itself after failures)."""
        self._listener = asyncio.create_task(self._listen_forever())

    async def stop(self) -> None:
        """Close every room, then stop listening."""
        await self.close_all()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    async def share_awareness(self, room: DocumentRoom, message: bytes) -> None:
        """Send a local client's awareness message to the other replicas' clients."""
        try:
            async with self.db.connection() as conn:
                await store.notify_awareness(
                    conn, room.workspace_id, room.path, self.replica, message
                )
        except Exception:  # presence is best effort; the document never depends on it
            self.log.warning("%r | awareness not shared with other replicas", room)

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.db.conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {store.CHANNEL}")
                    self.listening.set()
                    # Updates stored while this replica was not listening.
                    for room in self.rooms.values():
                        room.heard(room.last_seq + 1)
                    async for notify in conn.notifies():
                        self._dispatch(notify.payload)
            except (psycopg.Error, OSError) as e:
                self.listening.clear()
                self.log.warning(
                    "collaboration | listening failed (%s); retrying", type(e).__name__
                )
                await asyncio.sleep(RETRY_SECONDS)

    def _dispatch(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            room = self._by_key.get(message["doc"])
            if room is None or room.closed:
                return
            if "seq" in message:
                room.heard(int(message["seq"]))
            elif message.get("replica") != str(self.replica):
                room.remote_awareness(base64.b64decode(message["awareness"], validate=True))
        except (ValueError, KeyError, TypeError, binascii.Error):
            self.log.warning("collaboration | unreadable notification")
