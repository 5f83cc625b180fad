"""SQL of Jupyter sessions (``kernel_sessions``). No transactions of its own."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import sql

from platform_server.db import Connection
from platform_server.errors import Conflict


class SessionRow(TypedDict):
    """One row of ``kernel_sessions``."""

    id: uuid.UUID
    workspace_id: uuid.UUID
    path: str
    name: str | None
    type: str | None
    kernel_id: str
    created_at: datetime


_FIELDS = tuple(SessionRow.__annotations__)
COLUMNS = sql.SQL(", ").join(map(sql.Identifier, _FIELDS))
CHANGEABLE = frozenset({"path", "name", "type", "kernel_id"})


def path_taken(path: str) -> Conflict:
    """The 409 of a second session on one path."""
    return Conflict(f"A session for '{path[:200]}' exists already.")


async def list_sessions(conn: Connection, workspace_id: uuid.UUID) -> list[SessionRow]:
    """The workspace's sessions, oldest first."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT {cols} FROM kernel_sessions WHERE workspace_id = %s ORDER BY created_at, id"
        ).format(cols=COLUMNS),
        [workspace_id],
    )
    return cast(list[SessionRow], await cur.fetchall())


async def get_session(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID
) -> SessionRow | None:
    """One session of the workspace."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM kernel_sessions WHERE workspace_id = %s AND id = %s").format(
            cols=COLUMNS
        ),
        [workspace_id, session_id],
    )
    return cast(SessionRow | None, await cur.fetchone())


async def find_by_path(conn: Connection, workspace_id: uuid.UUID, path: str) -> SessionRow | None:
    """The workspace's session on ``path``, if any."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM kernel_sessions WHERE workspace_id = %s AND path = %s").format(
            cols=COLUMNS
        ),
        [workspace_id, path],
    )
    return cast(SessionRow | None, await cur.fetchone())


async def insert_session(
    conn: Connection,
    workspace_id: uuid.UUID,
    session_id: uuid.UUID,
    *,
    path: str,
    name: str | None,
    type: str | None,
    kernel_id: str,
) -> SessionRow | None:
    """Record a session; None if the path has one already (another replica was faster)."""
    cur = await conn.execute(
        sql.SQL(
            """INSERT INTO kernel_sessions (id, workspace_id, path, name, type, kernel_id)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (workspace_id, path) DO NOTHING
               RETURNING {cols}"""
        ).format(cols=COLUMNS),
        [session_id, workspace_id, path, name, type, kernel_id],
    )
    return cast(SessionRow | None, await cur.fetchone())


async def update_session(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID, changes: dict[str, Any]
) -> SessionRow | None:
    """Change some of ``path``, ``name``, ``type``, ``kernel_id``; None if there is no such
    session. ``Conflict`` if another session has the new path (a race between two requests
    raises psycopg's ``UniqueViolation`` instead, which ends the transaction)."""
    unknown = set(changes) - CHANGEABLE
    if unknown:
        msg = f"not session columns: {sorted(unknown)}"
        raise ValueError(msg)
    if "path" in changes:
        other = await find_by_path(conn, workspace_id, changes["path"])
        if other is not None and other["id"] != session_id:
            raise path_taken(changes["path"])
    if not changes:
        return await get_session(conn, workspace_id, session_id)
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
        for column in changes
    )
    cur = await conn.execute(
        sql.SQL(
            """UPDATE kernel_sessions SET {assignments}
               WHERE workspace_id = %(workspace_id)s AND id = %(session_id)s
               RETURNING {cols}"""
        ).format(assignments=assignments, cols=COLUMNS),
        {**changes, "workspace_id": workspace_id, "session_id": session_id},
    )
    return cast(SessionRow | None, await cur.fetchone())


async def delete_sessions(
    conn: Connection, workspace_id: uuid.UUID, session_ids: list[uuid.UUID]
) -> None:
    """Forget sessions (their kernels are gone, or they were deleted)."""
    if session_ids:
        await conn.execute(
            "DELETE FROM kernel_sessions WHERE workspace_id = %s AND id = ANY(%s)",
            [workspace_id, session_ids],
        )
