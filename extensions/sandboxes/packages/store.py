"""SQL of packages: the workspaces' recorded installs, and the download trail."""

from __future__ import annotations

import uuid
from typing import TypedDict, cast

from platform_server.db import Connection


class PackageRow(TypedDict):
    """One recorded distribution of a workspace."""

    name: str
    display_name: str
    version: str
    source: str | None


async def recorded(conn: Connection, workspace_id: uuid.UUID) -> list[PackageRow]:
    """The workspace's recorded distributions, by name."""
    cur = await conn.execute(
        """SELECT name, display_name, version, source FROM workspace_packages
           WHERE workspace_id = %s ORDER BY name""",
        [workspace_id],
    )
    return cast(list[PackageRow], await cur.fetchall())


async def record(
    conn: Connection, workspace_id: uuid.UUID, installed: list[PackageRow], removed: list[str]
) -> None:
    """Apply one change of the workspace's venv (idempotent: a change sent twice is one)."""
    for row in installed:
        await conn.execute(
            """INSERT INTO workspace_packages (workspace_id, name, display_name, version, source)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (workspace_id, name) DO UPDATE
               SET display_name = excluded.display_name, version = excluded.version,
                   source = excluded.source, recorded_at = now()""",
            [workspace_id, row["name"], row["display_name"], row["version"], row["source"]],
        )
    if removed:
        await conn.execute(
            "DELETE FROM workspace_packages WHERE workspace_id = %s AND name = ANY(%s)",
            [workspace_id, removed],
        )


async def forget(conn: Connection, workspace_id: uuid.UUID, name: str) -> bool:
    """Forget one recorded distribution; whether there was one."""
    cur = await conn.execute(
        "DELETE FROM workspace_packages WHERE workspace_id = %s AND name = %s",
        [workspace_id, name],
    )
    return cur.rowcount > 0


async def owner_of(conn: Connection, workspace_id: uuid.UUID) -> tuple[int, str] | None:
    """The workspace owner's id and username."""
    cur = await conn.execute(
        """SELECT u.id, u.username FROM workspaces w JOIN users u ON u.id = w.owner_id
           WHERE w.id = %s""",
        [workspace_id],
    )
    row = await cur.fetchone()
    return (row["id"], row["username"]) if row else None


async def bytes_today(conn: Connection, workspace_id: uuid.UUID) -> int:
    """Bytes of package files the workspace fetched in the last 24 hours."""
    cur = await conn.execute(
        """SELECT coalesce(sum(bytes), 0) AS total FROM package_downloads
           WHERE workspace_id = %s AND downloaded_at > now() - interval '24 hours'""",
        [workspace_id],
    )
    row = await cur.fetchone()
    return int(row["total"]) if row else 0


async def note_download(
    conn: Connection,
    workspace_id: uuid.UUID,
    user_id: int,
    project: str,
    version: str,
    filename: str,
    size: int,
) -> None:
    """Add one fetched file to the trail."""
    await conn.execute(
        """INSERT INTO package_downloads
               (workspace_id, user_id, project, version, filename, bytes)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        [workspace_id, user_id, project, version, filename, size],
    )
