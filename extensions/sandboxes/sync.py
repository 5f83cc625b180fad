"""File sync, sandbox → PostgreSQL: apply what the agent reports through the storage code of
the Contents API.

The agent is hostile ground (user code runs beside it): every path goes through the same
canonicaliser as the API, sizes and quotas are the Contents API's, and the workspace comes from
which sandbox's channel the message arrived on, never from the message.

Conflicts: a change from the sandbox older than the stored version loses, and the sandbox gets
the stored version back. The same bytes again are no change at all (that is also how files the
platform itself pushed into the sandbox come back without effect).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from tornado.websocket import WebSocketClientConnection

from extensions.sandboxes.agent_client import AgentClient
from extensions.workspaces import items, paths, writes
from extensions.workspaces.contents import PostgresContentsManager
from extensions.workspaces.events import publish
from platform_server.db import Connection, Database
from platform_server.errors import DomainError
from platform_server.timefmt import isoformat

MAX_MESSAGE_BYTES = 32 << 20  # a 10 MiB file, base64-encoded, with room to spare
FLUSH_TIMEOUT = 10.0

# Pushes the stored version of a path back into the sandbox (a sandbox change that lost).
PushBack = Callable[[uuid.UUID, str], Awaitable[None]]


class SyncConsumer:
    """Reads one sandbox's change channel and applies it; one per running sandbox."""

    def __init__(
        self,
        *,
        db: Database,
        workspace_id: uuid.UUID,
        client: AgentClient,
        limits: PostgresContentsManager,
        push_back: PushBack,
        log: logging.Logger,
    ) -> None:
        self.db = db
        self.workspace_id = workspace_id
        self.client = client
        self.limits = limits
        self.push_back = push_back
        self.log = log
        self.connection: WebSocketClientConnection | None = None
        self._flushes: dict[str, asyncio.Future[None]] = {}

    async def run(self) -> None:
        """Consume until the channel closes (the sandbox stopped, or another replica took
        over)."""
        self.connection = await self.client.websocket(
            "/api/sync", max_message_size=MAX_MESSAGE_BYTES
        )
        try:
            while (raw := await self.connection.read_message()) is not None:
                message = json.loads(raw)
                if message.get("type") == "flushed":
                    future = self._flushes.pop(str(message.get("id")), None)
                    if future is not None and not future.done():
                        future.set_result(None)
                    continue
                try:
                    await self.apply(message)
                except DomainError as e:
                    self.log.warning(
                        "workspace %s | sync refused %s: %s",
                        self.workspace_id,
                        str(message.get("path"))[:200],
                        e.message,
                    )
                seq = message.get("seq")
                if isinstance(seq, int):
                    await self.connection.write_message(json.dumps({"ack": seq}))
        finally:
            self.connection.close()
            for future in self._flushes.values():
                if not future.done():
                    future.set_exception(ConnectionError("the sync channel closed"))
            self._flushes.clear()

    async def flush(self) -> None:
        """Wait until every change made in the sandbox until now is in PostgreSQL."""
        if self.connection is None:
            return
        flush_id = uuid.uuid4().hex
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes[flush_id] = future
        await self.connection.write_message(json.dumps({"flush": flush_id}))
        await asyncio.wait_for(future, FLUSH_TIMEOUT)

    def close(self) -> None:
        """Close the channel."""
        if self.connection is not None:
            self.connection.close()

    # --- applying ----------------------------------------------------------------------------

    async def apply(self, message: dict[str, Any]) -> None:
        """Apply one change message (idempotent)."""
        kind = message.get("type")
        if kind == "moved":
            await self._moved(_path(message.get("from")), _path(message.get("to")))
            return
        path = _path(message.get("path"))
        if kind == "file":
            await self._file(path, message)
        elif kind == "directory":
            await self._directory(path)
        elif kind == "deleted":
            await self._deleted(path, _time(message.get("time")))
        elif kind == "too_large":
            await self._not_synced(
                path, int(message.get("size") or 0), "larger than the sync limit"
            )

    async def _file(self, path: str, message: dict[str, Any]) -> None:
        try:
            content = base64.b64decode(message.get("content") or "", validate=True)
        except (binascii.Error, ValueError) as e:
            msg = "bad file content"
            raise DomainError(msg) from e
        writes.check_size(len(content), self.limits.max_file_size, path)
        digest = hashlib.sha256(content).digest()
        changed_at = _time(message.get("mtime"))
        lost = False
        async with self.db.transaction() as conn:
            current = await _current(conn, self.workspace_id, path)
            if current is not None and current["sha256"] == digest:
                return
            if current is not None and current["last_modified"] > changed_at:
                lost = True
            else:
                await _make_parents(conn, self.workspace_id, path)
                await items.write_file(
                    conn,
                    self.workspace_id,
                    path,
                    content,
                    digest,
                    quota=self.limits.workspace_quota,
                )
                await conn.execute(
                    "DELETE FROM unsynced_files WHERE workspace_id = %s AND path = %s",
                    [self.workspace_id, path],
                )
                kind = "created" if current is None else "modified"
                await publish(
                    conn, self.workspace_id, await _event(conn, self.workspace_id, kind, path)
                )
        if lost:
            self.log.info(
                "workspace %s | sync: stored %s is newer; sandbox gets it", self.workspace_id, path
            )
            await self.push_back(self.workspace_id, path)

    async def _directory(self, path: str) -> None:
        async with self.db.transaction() as conn:
            if await items.item_type(conn, self.workspace_id, path) == "directory":
                return
            await _make_parents(conn, self.workspace_id, path)
            await items.make_directory(conn, self.workspace_id, path)
            await publish(
                conn, self.workspace_id, await _event(conn, self.workspace_id, "created", path)
            )

    async def _deleted(self, path: str, deleted_at: datetime) -> None:
        lost = False
        async with self.db.transaction() as conn:
            await conn.execute(
                "DELETE FROM unsynced_files WHERE workspace_id = %s AND path = %s",
                [self.workspace_id, path],
            )
            current = await _current(conn, self.workspace_id, path)
            if current is None:
                return
            if current["last_modified"] > deleted_at:
                lost = True
            else:
                await items.delete_item(conn, self.workspace_id, path)
                await publish(conn, self.workspace_id, {"type": "deleted", "path": path})
        if lost:
            await self.push_back(self.workspace_id, path)

    async def _moved(self, source: str, target: str) -> None:
        async with self.db.transaction() as conn:
            if await items.item_type(conn, self.workspace_id, source) is None:
                return  # the new path's own messages bring its content
            if await items.item_type(conn, self.workspace_id, target) is not None:
                await items.delete_item(conn, self.workspace_id, target)
            await _make_parents(conn, self.workspace_id, target)
            await items.rename_item(conn, self.workspace_id, source, target)
            event = await _event(conn, self.workspace_id, "moved", target)
            await publish(conn, self.workspace_id, {**event, "old_path": source})

    async def _not_synced(self, path: str, size: int, reason: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                """INSERT INTO unsynced_files (workspace_id, path, size, reason)
                   VALUES (%s, %s, %s, %s)
                   ON CONFLICT (workspace_id, path) DO UPDATE
                   SET size = excluded.size, reason = excluded.reason, noted_at = now()""",
                [self.workspace_id, path, size, reason],
            )


def _path(value: Any) -> str:
    if not isinstance(value, str):
        msg = "a change without a path"
        raise DomainError(msg)
    path = paths.canonical(value)
    if not path:
        msg = "a change of the workspace's root"
        raise DomainError(msg)
    return path


def _time(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return datetime.now(UTC)


async def _current(conn: Connection, workspace_id: uuid.UUID, path: str) -> items.ItemRow | None:
    if await items.item_type(conn, workspace_id, path) is None:
        return None
    return await items.get_item(conn, workspace_id, path, content=False)


async def _make_parents(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Create the missing folders above ``path`` (a sandbox may report a file first)."""
    parent = paths.split(path)[0]
    missing = []
    while parent and await items.item_type(conn, workspace_id, parent) is None:
        missing.append(parent)
        parent = paths.split(parent)[0]
    for folder in reversed(missing):
        await items.make_directory(conn, workspace_id, folder)


async def _event(conn: Connection, workspace_id: uuid.UUID, kind: str, path: str) -> dict[str, Any]:
    row = await items.get_item(conn, workspace_id, path, content=False)
    return {
        "type": kind,
        "path": path,
        "last_modified": isoformat(row["last_modified"]),
    }
