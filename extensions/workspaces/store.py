"""SQL of workspaces (their files are in ``items.py``). No transactions of its own."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import TypedDict, cast

from psycopg import sql

from extensions.workspaces import items, writes
from platform_server.db import Connection
from platform_server.errors import Conflict, NotFound

# Touch last_activity at most this often (seconds), not on every request.
TOUCH_INTERVAL = 60


class WorkspaceRow(TypedDict):
    """One row of ``workspaces``."""

    id: uuid.UUID
    owner_id: int
    name: str
    created_at: datetime
    updated_at: datetime
    last_activity: datetime
    bytes_used: int


_FIELDS = ("id", "owner_id", "name", "created_at", "updated_at", "last_activity", "bytes_used")
COLUMNS = sql.SQL(", ").join(map(sql.Identifier, _FIELDS))


def _not_found(workspace_id: uuid.UUID) -> NotFound:
    return NotFound(f"No workspace {workspace_id}.")


async def create_workspace(
    conn: Connection, owner_id: int, name: str, limit: int, files: dict[str, bytes]
) -> WorkspaceRow:
    """Create a workspace holding ``files`` (top-level names); ``Conflict`` past ``limit``."""
    # Locking the owner's row serialises their creations, so two at once cannot pass the limit.
    await conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", [owner_id])
    cur = await conn.execute("SELECT count(*) AS n FROM workspaces WHERE owner_id = %s", [owner_id])
    row = await cur.fetchone()
    if row is not None and row["n"] >= limit:
        msg = f"You have {limit} workspaces, the most allowed; delete one first."
        raise Conflict(msg)
    cur = await conn.execute(
        sql.SQL(
            """INSERT INTO workspaces (owner_id, name) VALUES (%s, %s)
               RETURNING {cols}"""
        ).format(cols=COLUMNS),
        [owner_id, name],
    )
    workspace = cast(WorkspaceRow, await cur.fetchone())
    for path, content in files.items():
        # Storing the parts counts them in bytes_used (triggers of migration 0008).
        await writes.store_content(conn, workspace["id"], content)
        await conn.execute(
            """INSERT INTO workspace_items
                   (workspace_id, path, parent, name, type, content_id, size, sha256, mimetype)
               VALUES (%s, %s, '', %s, 'file', currval('content_ids'), %s, %s, %s)""",
            [
                workspace["id"],
                path,
                path,
                len(content),
                hashlib.sha256(content).digest(),
                items.file_mimetype(path),
            ],
        )
    if files:
        workspace["bytes_used"] = await writes.lock_workspace(conn, workspace["id"])
    return workspace


async def rename_workspace(
    conn: Connection, workspace_id: uuid.UUID, owner_id: int, name: str
) -> WorkspaceRow:
    """Rename one of the owner's workspaces."""
    cur = await conn.execute(
        sql.SQL(
            """UPDATE workspaces SET name = %s, updated_at = now(), last_activity = now()
               WHERE id = %s AND owner_id = %s RETURNING {cols}"""
        ).format(cols=COLUMNS),
        [name, workspace_id, owner_id],
    )
    row = await cur.fetchone()
    if row is None:
        raise _not_found(workspace_id)
    return cast(WorkspaceRow, row)


async def delete_workspace(conn: Connection, workspace_id: uuid.UUID, owner_id: int) -> None:
    """Delete one of the owner's workspaces with all its files and checkpoints."""
    cur = await conn.execute(
        "DELETE FROM workspaces WHERE id = %s AND owner_id = %s", [workspace_id, owner_id]
    )
    if cur.rowcount == 0:
        raise _not_found(workspace_id)
