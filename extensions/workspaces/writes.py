"""What every write to a workspace shares: its lock, the checks of a write (If-Match, file size,
quota) and storing a content in parts. No transactions of its own; ``items``, ``uploads``,
``checkpoint_store`` and ``store`` build their writes from these.

``bytes_used`` (the quota) is kept by triggers on ``content_parts`` (migration 0008); code here
reads and checks it under the workspace's lock, so one writer at a time does.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from typing import TypeAlias, TypedDict

from psycopg import AsyncCursor
from psycopg.rows import DictRow

from platform_server.db import Connection
from platform_server.errors import EditConflict, NotFound, QuotaExceeded, TooLarge

# A statement sent, whose answer is read later (in a pipeline, after the statements that follow).
Cursor: TypeAlias = AsyncCursor[DictRow]

# Content is stored in parts of this size (bytes); an upload's parts are its chunks.
PART_SIZE = 1024 * 1024
_THREAD_THRESHOLD = 1024 * 1024
# NO KEY UPDATE: the lock writers need, without blocking foreign-key checks.
LOCK_WORKSPACE = "SELECT bytes_used FROM workspaces WHERE id = %s FOR NO KEY UPDATE"
_BYTES_USED = "SELECT bytes_used FROM workspaces WHERE id = %s"
_INSERT_PART = """INSERT INTO content_parts (content_id, seq, data, workspace_id)
    VALUES (currval('content_ids'), %(seq)s, %(data)s, %(ws)s)"""
_INSERT_PART_UNLESS_HELD = """INSERT INTO content_parts (content_id, seq, data, workspace_id)
    SELECT currval('content_ids'), %(seq)s, %(data)s, %(ws)s
    WHERE NOT EXISTS (SELECT FROM workspace_items
                      WHERE workspace_id = %(ws)s AND path = %(path)s AND sha256 = %(sha256)s)"""


class Stored(TypedDict):
    """What the checks read of the file a write replaces (an ``items.ItemRow`` is one)."""

    size: int
    sha256: bytes | None


def _human(size: int) -> str:
    """A byte count for people: '512 bytes', '1.5 MiB'."""
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


async def lock_workspace(conn: Connection, workspace_id: uuid.UUID) -> int:
    """Lock the workspace's row until the transaction ends; return its ``bytes_used``."""
    cur = await conn.execute(LOCK_WORKSPACE, [workspace_id])
    row = await cur.fetchone()
    if row is None:
        msg = "No such workspace."
        raise NotFound(msg)
    return int(row["bytes_used"])


def check_if_match(old: Stored | None, if_match: Sequence[str] | None, path: str) -> None:
    """``EditConflict`` unless the stored file's sha256 is one of the client's entity tags."""
    if if_match is None:
        return
    if old is not None and old["sha256"] is not None:
        current = old["sha256"].hex()
        if any(tag == "*" or tag.lower() == current for tag in if_match):
            return
    msg = (
        f"{path} was changed by someone else since you loaded it (its If-Match no longer "
        "matches). Reload it, or save without If-Match to overwrite."
    )
    raise EditConflict(msg)


def check_quota(bytes_used: int, delta: int, quota: int, path: str) -> None:
    """``QuotaExceeded`` if growing the workspace by ``delta`` bytes takes it over ``quota``."""
    if quota > 0 and delta > 0 and bytes_used + delta > quota:
        msg = (
            f"Cannot save {path}: the workspace would store {_human(bytes_used + delta)}, over "
            f"its quota of {_human(quota)}. Delete some files or checkpoints first."
        )
        raise QuotaExceeded(msg)


async def check_growth(
    conn: Connection, workspace_id: uuid.UUID, before: int, quota: int, path: str
) -> None:
    """``check_quota`` of what this transaction's writes stored, once they are done.

    Called after a write, with ``before`` the ``bytes_used`` read when the workspace was
    locked: only then is it known whether the content a write replaced is released or still
    kept by a checkpoint or a copy. The caller's transaction then rolls back.
    """
    if quota > 0:
        await check_grown(await send_bytes_used(conn, workspace_id), before, quota, path)


async def send_bytes_used(conn: Connection, workspace_id: uuid.UUID) -> Cursor:
    """Ask for the workspace's ``bytes_used`` (locked already); ``check_grown`` reads it."""
    return await conn.execute(_BYTES_USED, [workspace_id])


async def check_grown(bytes_used: Cursor, before: int, quota: int, path: str) -> None:
    """``check_growth`` on the answer of ``send_bytes_used``, sent after the writes."""
    row = await bytes_used.fetchone()
    assert row is not None  # noqa: S101 (the workspace is locked)
    check_quota(before, int(row["bytes_used"]) - before, quota, path)


def check_size(size: int, max_size: int, path: str) -> None:
    """``TooLarge`` if a file of ``size`` bytes is over ``max_size`` (0: no limit)."""
    if max_size > 0 and size > max_size:
        msg = f"Cannot save {path}: files are limited to {_human(max_size)}."
        raise TooLarge(msg)


async def store_content(
    conn: Connection,
    workspace_id: uuid.UUID,
    data: bytes,
    *,
    unless_held_by: tuple[str, bytes] | None = None,
) -> None:
    """Store ``data`` as a new content of the workspace, in parts; its id is then
    ``currval('content_ids')`` on this connection (nothing is fetched, so a pipelined
    transaction does not wait here).

    ``unless_held_by``: ``(path, sha256)``; no part is stored if the file at ``path`` holds
    bytes of that digest already (a save with no change), decided by PostgreSQL under the
    item's lock, so the caller need not wait to know.
    """
    await conn.execute("SELECT nextval('content_ids')")
    view = memoryview(data)
    query, held = _INSERT_PART, {}
    if unless_held_by is not None:
        query = _INSERT_PART_UNLESS_HELD
        held = {"path": unless_held_by[0], "sha256": unless_held_by[1]}
    for seq, start in enumerate(range(0, len(data), PART_SIZE), start=1):
        part = {"seq": seq, "data": view[start : start + PART_SIZE], "ws": workspace_id}
        await conn.execute(query, {**part, **held})


async def sha256_of(data: bytes) -> bytes:
    """The SHA-256 of ``data``; off the event loop when large (1 MB hashes in ~1 ms)."""
    if len(data) > _THREAD_THRESHOLD:
        return await asyncio.to_thread(_sha256, data)
    return _sha256(data)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
