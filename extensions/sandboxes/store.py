"""SQL of the sandboxes extension: sandbox rows, sync leases, pending mirrors, advisory locks.
No transactions of its own."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import sql
from psycopg.types.json import Jsonb

from extensions.sandboxes.spawners.base import AgentEndpoint
from platform_server.db import Connection

# States in which a sandbox's processes run (an unresponsive one's too: it may come back).
ALIVE = frozenset({"running", "unresponsive"})


class SandboxRow(TypedDict):
    """One row of ``sandboxes``."""

    id: uuid.UUID
    workspace_id: uuid.UUID | None
    state: str
    reason: str | None
    progress: int
    message: str
    spawner: str
    endpoint: dict[str, Any] | None
    spawner_state: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    last_activity: datetime
    state_since: datetime


_FIELDS = tuple(SandboxRow.__annotations__)
COLUMNS = sql.SQL(", ").join(map(sql.Identifier, _FIELDS))


def endpoint_json(endpoint: AgentEndpoint) -> dict[str, Any]:
    """An agent's endpoint as a row stores it."""
    if endpoint.unix_socket is not None:
        return {"unix_socket": endpoint.unix_socket}
    return {"host": endpoint.host, "port": endpoint.port}


async def get_for_workspace(conn: Connection, workspace_id: uuid.UUID) -> SandboxRow | None:
    """The workspace's sandbox row, whatever its state."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM sandboxes WHERE workspace_id = %s").format(cols=COLUMNS),
        [workspace_id],
    )
    return cast(SandboxRow | None, await cur.fetchone())


async def for_workspaces(conn: Connection, workspace_ids: list[uuid.UUID]) -> list[SandboxRow]:
    """The sandbox rows of these workspaces (a workspace without one is left out)."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM sandboxes WHERE workspace_id = ANY(%s)").format(cols=COLUMNS),
        [workspace_ids],
    )
    return cast(list[SandboxRow], await cur.fetchall())


async def get(conn: Connection, sandbox_id: uuid.UUID) -> SandboxRow | None:
    """One sandbox row by id."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM sandboxes WHERE id = %s").format(cols=COLUMNS), [sandbox_id]
    )
    return cast(SandboxRow | None, await cur.fetchone())


async def insert_starting(
    conn: Connection, sandbox_id: uuid.UUID, workspace_id: uuid.UUID | None, spawner: str
) -> None:
    """Record a sandbox about to start."""
    await conn.execute(
        """INSERT INTO sandboxes (id, workspace_id, state, spawner, message)
           VALUES (%s, %s, 'starting', %s, 'Starting the sandbox')""",
        [sandbox_id, workspace_id, spawner],
    )


async def set_progress(
    conn: Connection, sandbox_id: uuid.UUID, progress: int, message: str
) -> None:
    """Record start-up progress (0-100) and what is happening."""
    await conn.execute(
        "UPDATE sandboxes SET progress = %s, message = %s WHERE id = %s",
        [max(0, min(100, progress)), message, sandbox_id],
    )


async def set_started(
    conn: Connection,
    sandbox_id: uuid.UUID,
    endpoint: dict[str, Any],
    spawner_state: dict[str, Any],
) -> None:
    """Record where the agent listens, before its files are loaded."""
    await conn.execute(
        "UPDATE sandboxes SET endpoint = %s, spawner_state = %s WHERE id = %s",
        [Jsonb(endpoint), Jsonb(spawner_state), sandbox_id],
    )


async def set_state(
    conn: Connection, sandbox_id: uuid.UUID, state: str, reason: str | None = None
) -> None:
    """Move a sandbox to ``state`` (running records its start time)."""
    await conn.execute(
        """UPDATE sandboxes SET state = %s, reason = %s, state_since = now(),
               progress = CASE WHEN %s = 'running' THEN 100 ELSE progress END,
               message = CASE WHEN %s = 'running' THEN 'Ready' ELSE message END,
               started_at = CASE WHEN %s = 'running' THEN now() ELSE started_at END
           WHERE id = %s""",
        [state, reason, state, state, state, sandbox_id],
    )


async def change_state(
    conn: Connection, sandbox_id: uuid.UUID, old: str, new: str, reason: str | None = None
) -> bool:
    """Move a sandbox from ``old`` to ``new`` (start time, progress and message kept);
    whether it was in ``old``."""
    cur = await conn.execute(
        """UPDATE sandboxes SET state = %s, reason = %s, state_since = now()
           WHERE id = %s AND state = %s""",
        [new, reason, sandbox_id, old],
    )
    return cur.rowcount == 1


async def delete(conn: Connection, sandbox_id: uuid.UUID) -> None:
    """Forget a sandbox."""
    await conn.execute("DELETE FROM sandboxes WHERE id = %s", [sandbox_id])


async def delete_ended_unassigned(conn: Connection) -> None:
    """Forget the warm-pool sandboxes that ended (failed to start, or died): no workspace
    shows them."""
    await conn.execute(
        "DELETE FROM sandboxes WHERE workspace_id IS NULL AND state IN ('stopped', 'failed')"
    )


async def list_running(conn: Connection) -> list[SandboxRow]:
    """Every sandbox that is (or is becoming) alive."""
    cur = await conn.execute(
        sql.SQL(
            """SELECT {cols} FROM sandboxes
               WHERE state IN ('starting', 'running', 'unresponsive', 'stopping')"""
        ).format(cols=COLUMNS)
    )
    return cast(list[SandboxRow], await cur.fetchall())


async def workspace_activity(conn: Connection, workspace_id: uuid.UUID) -> datetime | None:
    """When the workspace was last used through the API."""
    cur = await conn.execute("SELECT last_activity FROM workspaces WHERE id = %s", [workspace_id])
    row = await cur.fetchone()
    return None if row is None else cast(datetime, row["last_activity"])


async def for_owner(
    conn: Connection, owner_id: int, *, running_only: bool = False
) -> list[SandboxRow]:
    """The sandboxes of one user's workspaces (only the running ones if ``running_only``)."""
    cur = await conn.execute(
        sql.SQL(
            """SELECT {cols} FROM sandboxes s WHERE (s.state = 'running' OR NOT %s)
               AND s.workspace_id IN (SELECT id FROM workspaces WHERE owner_id = %s)"""
        ).format(cols=sql.SQL(", ").join(sql.Identifier("s", f) for f in _FIELDS)),
        [running_only, owner_id],
    )
    return cast(list[SandboxRow], await cur.fetchall())


# The advisory-lock class (first key of the two-integer form, a key space of its own) under
# which one user's sandbox starts are serialised.
OWNER_START_LOCK = 7_081_542


async def lock_owner_starts(conn: Connection, workspace_id: uuid.UUID) -> None:
    """Hold, until the transaction ends, the lock of the starts of the workspace owner's
    sandboxes; a count made after it (``live_for_owner``) stays true until then."""
    await conn.execute(
        """SELECT pg_advisory_xact_lock(%s, (owner_id %% 2147483647)::integer)
           FROM workspaces WHERE id = %s""",
        [OWNER_START_LOCK, workspace_id],
    )


async def live_for_owner(conn: Connection, workspace_id: uuid.UUID) -> list[tuple[str, str]]:
    """``(workspace id, name)`` of the other workspaces of the workspace's owner whose sandbox
    is starting, running or unresponsive (its processes may run)."""
    cur = await conn.execute(
        """SELECT w.id, w.name FROM sandboxes s JOIN workspaces w ON w.id = s.workspace_id
           WHERE s.state IN ('starting', 'running', 'unresponsive') AND w.id <> %(ws)s
             AND w.owner_id = (SELECT owner_id FROM workspaces WHERE id = %(ws)s)
           ORDER BY w.last_activity DESC, w.id""",
        {"ws": workspace_id},
    )
    return [(str(row["id"]), str(row["name"])) for row in await cur.fetchall()]


async def claim_sync(
    conn: Connection, replica: uuid.UUID, lease_seconds: float, sandbox_id: uuid.UUID | None = None
) -> list[SandboxRow]:
    """Take (or renew) the sync lease of running sandboxes nobody else holds; return them.

    With ``sandbox_id``, only that sandbox (just started here) is claimed.
    """
    cur = await conn.execute(
        sql.SQL(
            """UPDATE sandboxes
               SET sync_owner = %(me)s,
                   sync_lease_until = now() + make_interval(secs => %(lease)s)
               WHERE state = 'running' AND workspace_id IS NOT NULL
                 AND (%(id)s::uuid IS NULL OR id = %(id)s)
                 AND (sync_owner IS NULL OR sync_owner = %(me)s OR sync_lease_until < now())
               RETURNING {cols}"""
        ).format(cols=COLUMNS),
        {"me": replica, "lease": lease_seconds, "id": sandbox_id},
    )
    return cast(list[SandboxRow], await cur.fetchall())


async def release_sync(conn: Connection, replica: uuid.UUID) -> None:
    """Give up every sync lease this replica holds (another replica takes them over)."""
    await conn.execute("UPDATE sandboxes SET sync_owner = NULL WHERE sync_owner = %s", [replica])


async def unsynced_files(conn: Connection, workspace_id: uuid.UUID) -> list[dict[str, Any]]:
    """Files that stay in the sandbox only, and why."""
    cur = await conn.execute(
        """SELECT path, size, reason FROM unsynced_files WHERE workspace_id = %s ORDER BY path""",
        [workspace_id],
    )
    return list(await cur.fetchall())


PENDING_REASON = "saved, not yet copied into the sandbox (it is not responding)"


async def note_pending(conn: Connection, workspace_id: uuid.UUID, paths: list[str]) -> None:
    """Note that the sandbox lacks the stored version of ``paths`` (noted again: later)."""
    for path in paths:
        await conn.execute(
            """INSERT INTO pending_mirrors (workspace_id, path, noted_at)
               VALUES (%s, %s, clock_timestamp())
               ON CONFLICT (workspace_id, path) DO UPDATE SET noted_at = clock_timestamp()""",
            [workspace_id, path],
        )


async def pending(conn: Connection, workspace_id: uuid.UUID) -> list[tuple[str, datetime]]:
    """``(path, noted_at)`` of the workspace's pending mirrors, oldest first."""
    cur = await conn.execute(
        """SELECT path, noted_at FROM pending_mirrors WHERE workspace_id = %s
           ORDER BY noted_at, path""",
        [workspace_id],
    )
    return [(row["path"], row["noted_at"]) for row in await cur.fetchall()]


async def clear_pending(
    conn: Connection, workspace_id: uuid.UUID, path: str | None, noted_until: datetime
) -> None:
    """Forget the pending mirrors of ``path`` (of every path if None) noted until
    ``noted_until``: one noted again since stays."""
    await conn.execute(
        """DELETE FROM pending_mirrors WHERE workspace_id = %s
           AND (%s::text IS NULL OR path = %s) AND noted_at <= %s""",
        [workspace_id, path, path, noted_until],
    )


async def pending_files(conn: Connection, workspace_id: uuid.UUID) -> list[dict[str, Any]]:
    """The pending mirrors as ``unsynced_files`` lists files (size 0 for a deleted one)."""
    cur = await conn.execute(
        """SELECT p.path, coalesce(i.size, 0) AS size, %s AS reason
           FROM pending_mirrors p
           LEFT JOIN workspace_items i ON i.workspace_id = p.workspace_id AND i.path = p.path
           WHERE p.workspace_id = %s ORDER BY p.path""",
        [PENDING_REASON, workspace_id],
    )
    return list(await cur.fetchall())


async def workspaces_with_pending(conn: Connection) -> set[uuid.UUID]:
    """The workspaces with pending mirrors."""
    cur = await conn.execute("SELECT DISTINCT workspace_id FROM pending_mirrors")
    return {row["workspace_id"] for row in await cur.fetchall()}


async def claim_pooled(conn: Connection, workspace_id: uuid.UUID) -> SandboxRow | None:
    """Assign the oldest running, unassigned (warm-pool) sandbox to the workspace, if any.

    SKIP LOCKED: two replicas claiming at once get different sandboxes.
    """
    cur = await conn.execute(
        sql.SQL(
            """UPDATE sandboxes SET workspace_id = %s, state = 'starting', state_since = now(),
                   progress = 80, message = 'Loading your files', last_activity = now()
               WHERE id = (SELECT id FROM sandboxes
                           WHERE workspace_id IS NULL AND state = 'running'
                           ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
               RETURNING {cols}"""
        ).format(cols=COLUMNS),
        [workspace_id],
    )
    return cast(SandboxRow | None, await cur.fetchone())


async def take_from_pool(conn: Connection, sandbox_id: uuid.UUID) -> bool:
    """Mark a warm-pool sandbox stopping, unless a workspace has claimed it; whether it was.

    ``claim_pooled`` takes only running sandboxes: from here on, none claims this one.
    """
    cur = await conn.execute(
        """UPDATE sandboxes SET state = 'stopping', state_since = now()
           WHERE id = %s AND workspace_id IS NULL AND state = 'running'""",
        [sandbox_id],
    )
    return cur.rowcount == 1


async def count_pool(conn: Connection) -> int:
    """Warm-pool sandboxes running or starting."""
    cur = await conn.execute(
        """SELECT count(*) AS n FROM sandboxes
           WHERE workspace_id IS NULL AND state IN ('starting', 'running')"""
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row["n"])


async def advisory_lock(conn: Connection, key: int) -> None:
    """Take the session-level advisory lock ``key``, waiting for whoever holds it."""
    await conn.execute("SELECT pg_advisory_lock(%s)", [key])


async def try_advisory_lock(conn: Connection, key: int) -> bool:
    """Take the session-level advisory lock ``key`` if nobody holds it; whether it was."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", [key])
    row = await cur.fetchone()
    return bool(row and row["taken"])


async def changed_since(conn: Connection, workspace_id: uuid.UUID, since: datetime) -> list[str]:
    """The paths of the workspace's items written at or after ``since``, in path order."""
    cur = await conn.execute(
        """SELECT path FROM workspace_items
           WHERE workspace_id = %s AND last_modified >= %s ORDER BY path""",
        [workspace_id, since],
    )
    return [row["path"] for row in await cur.fetchall()]
