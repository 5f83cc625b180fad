"""SQL of checkpoints: saved versions of a file, sharing its content. No transactions of its own.

Every write, deletions included, locks the workspace first, as in ``items``: a checkpoint's
content counts in the workspace's quota, and releasing it updates ``bytes_used``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import sql

from extensions.workspaces import items, writes
from platform_server.db import Connection
from platform_server.errors import InvalidInput, NotFound


class CheckpointRow(TypedDict):
    """One checkpoint: its id and the last_modified of the file it saved."""

    id: int
    last_modified: datetime


def _checkpoint_id(checkpoint_id: str, path: str) -> int:
    """The row id of a checkpoint id given by a client; ``NotFound`` if it cannot be one."""
    if checkpoint_id.isascii() and checkpoint_id.isdigit() and len(checkpoint_id) < 19:
        return int(checkpoint_id)
    msg = f"Checkpoint does not exist: {path}@{checkpoint_id}"
    raise NotFound(msg)


async def create_checkpoint(
    conn: Connection, workspace_id: uuid.UUID, path: str, *, keep: int
) -> CheckpointRow:
    """Checkpoint the file at ``path``, keeping its newest ``keep`` checkpoints.

    When the newest checkpoint already holds the same bytes, it is returned instead.
    """
    await writes.lock_workspace(conn, workspace_id)
    cur = await conn.execute(
        "SELECT type, sha256 FROM workspace_items WHERE workspace_id = %s AND path = %s",
        [workspace_id, path],
    )
    item = await cur.fetchone()
    if item is None:
        msg = f"No such file: {path}"
        raise NotFound(msg)
    if item["type"] == "directory":
        msg = f"{path} is a directory; only files have checkpoints."
        raise InvalidInput(msg)
    params = {"ws": workspace_id, "path": path, "keep": keep}
    cur = await conn.execute(
        """SELECT id, sha256, last_modified FROM checkpoints
           WHERE workspace_id = %(ws)s AND path = %(path)s ORDER BY id DESC LIMIT 1""",
        params,
    )
    newest = await cur.fetchone()
    if newest is not None and newest["sha256"] == item["sha256"]:
        return {"id": newest["id"], "last_modified": newest["last_modified"]}
    cur = await conn.execute(
        """INSERT INTO checkpoints (workspace_id, path, type, content_id, size, sha256,
                                    last_modified)
           SELECT workspace_id, path, type, content_id, size, sha256, last_modified
           FROM workspace_items WHERE workspace_id = %(ws)s AND path = %(path)s
           RETURNING id, last_modified""",
        params,
    )
    created = cast(CheckpointRow, await cur.fetchone())
    await conn.execute(
        """DELETE FROM checkpoints WHERE workspace_id = %(ws)s AND path = %(path)s
           AND id NOT IN (SELECT id FROM checkpoints WHERE workspace_id = %(ws)s
                          AND path = %(path)s ORDER BY id DESC LIMIT %(keep)s)""",
        params,
    )
    return created


async def list_checkpoints(
    conn: Connection, workspace_id: uuid.UUID, path: str
) -> list[CheckpointRow]:
    """The checkpoints of ``path``, oldest first (JupyterLab restores the last one)."""
    cur = await conn.execute(
        """SELECT id, last_modified FROM checkpoints
           WHERE workspace_id = %s AND path = %s ORDER BY id""",
        [workspace_id, path],
    )
    return cast(list[CheckpointRow], await cur.fetchall())


async def checkpoint_content(
    conn: Connection, workspace_id: uuid.UUID, path: str, checkpoint_id: str
) -> tuple[CheckpointRow, bytes]:
    """A checkpoint of ``path`` with the bytes it saved; ``NotFound`` if there is none."""
    cp_id = _checkpoint_id(checkpoint_id, path)
    cur = await conn.execute(
        """SELECT c.id, c.last_modified, p.data FROM checkpoints c
           LEFT JOIN content_parts p ON p.content_id = c.content_id
           WHERE c.id = %s AND c.workspace_id = %s AND c.path = %s ORDER BY p.seq""",
        [cp_id, workspace_id, path],
        binary=True,
    )
    rows = await cur.fetchall()
    if not rows:
        msg = f"Checkpoint does not exist: {path}@{checkpoint_id}"
        raise NotFound(msg)
    data = b"".join(row["data"] for row in rows if row["data"] is not None)
    return {"id": rows[0]["id"], "last_modified": rows[0]["last_modified"]}, data


async def restore_checkpoint(
    conn: Connection, workspace_id: uuid.UUID, path: str, checkpoint_id: str, *, quota: int
) -> items.ItemRow:
    """Write a checkpoint's content back to ``path`` (recreating the file if it was deleted)."""
    cp_id = _checkpoint_id(checkpoint_id, path)
    bytes_used = await writes.lock_workspace(conn, workspace_id)
    cur = await conn.execute(
        """SELECT size FROM checkpoints WHERE id = %s AND workspace_id = %s AND path = %s""",
        [cp_id, workspace_id, path],
    )
    checkpoint = await cur.fetchone()
    if checkpoint is None:
        msg = f"Checkpoint does not exist: {path}@{checkpoint_id}"
        raise NotFound(msg)
    await items.replaceable(conn, workspace_id, path)
    row = await items.upsert(
        conn,
        workspace_id,
        path,
        sql.SQL("SELECT content_id, size, sha256 FROM checkpoints WHERE id = %(id)s"),
        {"id": cp_id},
    )
    # The checkpoint's content is shared, not copied: this can only release bytes.
    await writes.check_growth(conn, workspace_id, bytes_used, quota, path)
    return row


async def delete_checkpoint(
    conn: Connection, workspace_id: uuid.UUID, path: str, checkpoint_id: str
) -> None:
    """Delete one checkpoint of ``path``; ``NotFound`` if it has no such checkpoint."""
    await writes.lock_workspace(conn, workspace_id)  # its content may be released
    cur = await conn.execute(
        "DELETE FROM checkpoints WHERE id = %s AND workspace_id = %s AND path = %s",
        [_checkpoint_id(checkpoint_id, path), workspace_id, path],
    )
    if cur.rowcount == 0:
        msg = f"Checkpoint does not exist: {path}@{checkpoint_id}"
        raise NotFound(msg)


async def rename_checkpoints(
    conn: Connection,
    workspace_id: uuid.UUID,
    old_path: str,
    new_path: str,
    checkpoint_id: str | None = None,
) -> None:
    """Move the checkpoints of ``old_path`` (or only ``checkpoint_id``) to ``new_path``."""
    query = "UPDATE checkpoints SET path = %s WHERE workspace_id = %s AND path = %s"
    params: list[Any] = [new_path, workspace_id, old_path]
    if checkpoint_id is not None:
        query += " AND id = %s"
        params.append(_checkpoint_id(checkpoint_id, old_path))
    await conn.execute(query, params)


async def delete_checkpoints(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Delete every checkpoint of ``path`` and of anything under it."""
    await writes.lock_workspace(conn, workspace_id)  # contents may be released
    await conn.execute(
        sql.SQL("DELETE FROM checkpoints WHERE workspace_id = %(ws)s AND {subtree}").format(
            subtree=items.IN_SUBTREE
        ),
        {"ws": workspace_id, "path": path},
    )


async def ensure_checkpoint(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Checkpoint the file at ``path`` unless it has a checkpoint already (Jupyter keeps one
    per notebook at least): in the save's transaction, after ``items.write_file``."""
    await conn.execute(
        """INSERT INTO checkpoints (workspace_id, path, type, content_id, size, sha256,
                                    last_modified)
           SELECT workspace_id, path, type, content_id, size, sha256, last_modified
           FROM workspace_items WHERE workspace_id = %(ws)s AND path = %(path)s
             AND NOT EXISTS (SELECT FROM checkpoints
                             WHERE workspace_id = %(ws)s AND path = %(path)s)""",
        {"ws": workspace_id, "path": path},
    )
