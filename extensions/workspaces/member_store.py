"""SQL of workspace members and of who may reach a workspace. No transactions of its own.

A user reaches a workspace as its owner (``workspaces.owner_id``) or as a member
(``workspace_members``, migration 0013); every query here joins the two the same way.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import sql

from extensions.workspaces.events import publish
from extensions.workspaces.store import TOUCH_INTERVAL, WorkspaceRow
from platform_server.db import Connection
from platform_server.errors import Conflict, NotFound

MEMBER_EVENT = "member"
"""The type of the workspace event published when a member is added, changed or removed."""


class WorkspaceView(WorkspaceRow):
    """A workspace as one user sees it: the row, their role, the owner's name, whether shared."""

    role: str
    owner: str
    shared: bool


class AccessRow(TypedDict):
    """A user's role in a workspace, and the workspace's owner."""

    role: str
    owner_id: int


class MemberRow(TypedDict):
    """One line of a workspace's member list (the owner's included)."""

    username: str
    role: str
    added_at: datetime


# The workspaces a user reaches, with their role: the ones they own, and the ones shared with
# them (a UNION, so each side uses its own index).
_REACHABLE = sql.SQL("""
    WITH reachable AS (
        SELECT id, 'owner' AS role FROM workspaces WHERE owner_id = %(user)s
        UNION ALL
        SELECT workspace_id, role FROM workspace_members WHERE user_id = %(user)s)
""")
_VIEW = _REACHABLE + sql.SQL(
    """SELECT {cols}, reachable.role, owners.username AS owner,
                EXISTS (SELECT FROM workspace_members m WHERE m.workspace_id = w.id) AS shared
         FROM reachable
         JOIN workspaces w ON w.id = reachable.id
         JOIN users owners ON owners.id = w.owner_id"""
).format(
    cols=sql.SQL(", ").join(sql.Identifier("w", name) for name in WorkspaceRow.__annotations__)
)


def _not_found(workspace_id: uuid.UUID) -> NotFound:
    return NotFound(f"No workspace {workspace_id}.")


async def reachable_workspaces(conn: Connection, user_id: int) -> list[WorkspaceView]:
    """The workspaces a user owns or is a member of, most recently active first."""
    cur = await conn.execute(
        _VIEW + sql.SQL(" ORDER BY w.last_activity DESC, w.id"), {"user": user_id}
    )
    return cast(list[WorkspaceView], await cur.fetchall())


async def reachable_workspace(
    conn: Connection, workspace_id: uuid.UUID, user_id: int
) -> WorkspaceView:
    """One workspace the user owns or is a member of; ``NotFound`` otherwise."""
    cur = await conn.execute(
        _VIEW + sql.SQL(" WHERE w.id = %(id)s"), {"user": user_id, "id": workspace_id}
    )
    row = await cur.fetchone()
    if row is None:
        raise _not_found(workspace_id)
    return cast(WorkspaceView, row)


async def access(
    conn: Connection,
    workspace_id: uuid.UUID,
    user_id: int,
    *,
    active_roles: list[str],
) -> AccessRow:
    """The user's role in the workspace (``NotFound`` when they have none); when the role is
    one of ``active_roles``, record the workspace's activity (at most once a minute). One
    statement: it runs on every request to a workspace."""
    cur = await conn.execute(
        _REACHABLE
        + sql.SQL(
            """, found AS (
                 SELECT w.id, w.owner_id, reachable.role,
                        w.last_activity < now() - make_interval(secs => %(every)s) AS stale
                 FROM reachable JOIN workspaces w ON w.id = reachable.id
                 WHERE reachable.id = %(id)s),
             active AS (
                 UPDATE workspaces SET last_activity = now()
                 WHERE id = (SELECT id FROM found WHERE stale AND role = ANY(%(active)s)))
             SELECT role, owner_id FROM found"""
        ),
        {"user": user_id, "id": workspace_id, "every": TOUCH_INTERVAL, "active": active_roles},
    )
    row = await cur.fetchone()
    if row is None:
        raise _not_found(workspace_id)
    return cast(AccessRow, row)


async def members(conn: Connection, workspace_id: uuid.UUID) -> list[MemberRow]:
    """The owner (role ``owner``, added when the workspace was made), then the members in
    the order they were added."""
    cur = await conn.execute(
        """SELECT username, role, added_at FROM (
               SELECT u.username, 'owner' AS role, w.created_at AS added_at, 0 AS rank
               FROM workspaces w JOIN users u ON u.id = w.owner_id WHERE w.id = %(id)s
               UNION ALL
               SELECT u.username, m.role, m.added_at, 1 AS rank
               FROM workspace_members m JOIN users u ON u.id = m.user_id
               WHERE m.workspace_id = %(id)s) listed
           ORDER BY rank, added_at, username""",
        {"id": workspace_id},
    )
    return cast(list[MemberRow], await cur.fetchall())


async def count_members(conn: Connection, workspace_id: uuid.UUID) -> int:
    """How many members the workspace has (its owner not counted)."""
    cur = await conn.execute(
        "SELECT count(*) AS n FROM workspace_members WHERE workspace_id = %s", [workspace_id]
    )
    row = await cur.fetchone()
    return int(row["n"]) if row is not None else 0


async def add_member(
    conn: Connection,
    workspace_id: uuid.UUID,
    user_id: int,
    username: str,
    role: str,
    added_by: int,
) -> MemberRow:
    """Make the user a member; ``Conflict`` if they already are."""
    cur = await conn.execute(
        """INSERT INTO workspace_members (workspace_id, user_id, role, added_by)
           VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING role, added_at""",
        [workspace_id, user_id, role, added_by],
    )
    row = await cur.fetchone()
    if row is None:
        msg = f"{username} is already a member of this workspace."
        raise Conflict(msg)
    await _publish_change(conn, workspace_id, user_id, username, role)
    return {"username": username, "role": row["role"], "added_at": row["added_at"]}


async def set_role(
    conn: Connection, workspace_id: uuid.UUID, user_id: int, username: str, role: str
) -> MemberRow:
    """Change a member's role; ``NotFound`` if they are not a member."""
    cur = await conn.execute(
        """UPDATE workspace_members SET role = %s WHERE workspace_id = %s AND user_id = %s
           RETURNING role, added_at""",
        [role, workspace_id, user_id],
    )
    row = await cur.fetchone()
    if row is None:
        raise no_member(username)
    await _publish_change(conn, workspace_id, user_id, username, role)
    return {"username": username, "role": row["role"], "added_at": row["added_at"]}


async def remove_member(
    conn: Connection, workspace_id: uuid.UUID, user_id: int, username: str
) -> None:
    """Remove a member; ``NotFound`` if they are not one."""
    cur = await conn.execute(
        "DELETE FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
        [workspace_id, user_id],
    )
    if cur.rowcount == 0:
        raise no_member(username)
    await _publish_change(conn, workspace_id, user_id, username, None)


def no_member(username: str) -> NotFound:
    """The 404 of a user who is not a member of the workspace."""
    return NotFound(f"{username} is not a member of this workspace.")


async def _publish_change(
    conn: Connection, workspace_id: uuid.UUID, user_id: int, username: str, role: str | None
) -> None:
    """Tell every replica (their open sockets of this user close, editors refresh their
    member list) once the transaction commits. ``role`` None: removed."""
    event: dict[str, Any] = {
        "type": MEMBER_EVENT,
        "user_id": user_id,
        "username": username,
        "role": role,
    }
    await publish(conn, workspace_id, event)
