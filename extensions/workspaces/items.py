"""SQL of workspace files and folders: reading, writing, deleting, moving and copying them. No
transactions of its own; what every write shares (locks, limits, storing content) is ``writes``.

Paths given to these functions are canonical (``paths.canonical``). Every function that changes a
workspace's files first locks its ``workspaces`` row, so writes to one workspace are serialised:
a save and the deletion or renaming of its parent directory can never interleave, and
``workspaces.bytes_used`` (the quota) is read and checked by one writer at a time.

``bytes_used`` is the length of every content part the workspace stores (files, checkpoints and
uploads in progress; a content shared by several of them counts once): triggers on
``content_parts`` (migration 0008) keep it, so code here only checks it. Deleting or moving an
item takes its checkpoints and uploads in progress along (``checkpoint_store`` and ``uploads``
hold the rest of their SQL).
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, cast

from psycopg import sql
from psycopg.rows import TupleRow, tuple_row

from extensions.workspaces import paths, writes
from platform_server.db import Connection
from platform_server.errors import Conflict, InvalidInput, NotFound


class ItemRow(TypedDict):
    """One item of ``workspace_items``, without its content."""

    path: str
    type: str
    size: int
    sha256: bytes | None
    mimetype: str | None
    created: datetime
    last_modified: datetime


class ContentRow(ItemRow):
    """An item with its content (None for directories, or when it was not asked for)."""

    content: bytes | None


class TreeRow(TypedDict):
    """One part of an item of a subtree (``data`` is None for a directory or an empty file)."""

    path: str
    type: str
    size: int
    last_modified: datetime
    data: bytes | None


_ITEM_COLUMNS = sql.SQL("path, type, size, sha256, mimetype, created, last_modified")
_ITEM_TYPE = "SELECT type FROM workspace_items WHERE workspace_id = %s AND path = %s"
_LOCK_ITEM = sql.SQL(
    "SELECT {cols} FROM workspace_items WHERE workspace_id = %s AND path = %s FOR UPDATE"
).format(cols=_ITEM_COLUMNS)
# ``path`` is %(path)s or one of its descendants: a range in "C" collation, no LIKE.
IN_SUBTREE = sql.SQL("(path = %(path)s OR (path >= %(path)s || '/' AND path < %(path)s || '0'))")


def file_type(path: str) -> str:
    """The stored type of a file at ``path``: Jupyter decides 'notebook' from the name alone."""
    return "notebook" if path.endswith(".ipynb") else "file"


def guess_mimetype(path: str) -> str | None:
    """The mimetype Jupyter reports for a file model: a guess from the name, None if unknown."""
    # A leading '/' as in Jupyter's OS paths: a name like "data:x,y" is not read as a data URL.
    return mimetypes.guess_type("/" + path)[0]


def file_mimetype(path: str) -> str | None:
    """The stored mimetype of a file at ``path`` (notebook models have none)."""
    return None if path.endswith(".ipynb") else guess_mimetype(path)


# --- reading -------------------------------------------------------------------------------


async def workspace_created(conn: Connection, workspace_id: uuid.UUID) -> datetime:
    """When the workspace was made (the times of its root directory); ``NotFound`` if gone."""
    cur = await conn.execute("SELECT created_at FROM workspaces WHERE id = %s", [workspace_id])
    row = await cur.fetchone()
    if row is None:
        msg = "No such workspace."
        raise NotFound(msg)
    return cast(datetime, row["created_at"])


async def get_item(
    conn: Connection, workspace_id: uuid.UUID, path: str, *, content: bool
) -> ContentRow:
    """One item, with its content when ``content``; ``NotFound`` if there is none at ``path``."""
    if not content:
        cur = await conn.execute(
            sql.SQL(
                "SELECT {cols}, NULL::bytea AS content FROM workspace_items "
                "WHERE workspace_id = %s AND path = %s"
            ).format(cols=_ITEM_COLUMNS),
            [workspace_id, path],
        )
        row = await cur.fetchone()
        if row is None:
            raise _no_item(path)
        return cast(ContentRow, row)
    # One row per part (joined here: three times faster than string_agg in PostgreSQL).
    # Binary results: a bytea arrives as is, not as hex text twice its size to decode.
    cur = await conn.execute(
        sql.SQL(
            """SELECT {cols}, p.data FROM workspace_items i
               LEFT JOIN content_parts p ON p.content_id = i.content_id
               WHERE i.workspace_id = %s AND i.path = %s ORDER BY p.seq"""
        ).format(cols=_ITEM_COLUMNS),
        [workspace_id, path],
        binary=True,
    )
    rows = await cur.fetchall()
    if not rows:
        raise _no_item(path)
    item = cast(ContentRow, rows[0])
    parts = [row["data"] for row in rows if row["data"] is not None]
    item["content"] = None if item["type"] == "directory" else b"".join(parts)
    del item["data"]  # type: ignore[typeddict-item]
    return item


def _no_item(path: str) -> NotFound:
    return NotFound(f"No such file or directory: {path}")


async def item_type(conn: Connection, workspace_id: uuid.UUID, path: str) -> str | None:
    """The type of the item at ``path`` ('file', 'notebook' or 'directory'), or None."""
    cur = await conn.execute(_ITEM_TYPE, [workspace_id, path])
    row = await cur.fetchone()
    return None if row is None else cast(str, row["type"])


async def list_children(conn: Connection, workspace_id: uuid.UUID, parent: str) -> list[TupleRow]:
    """``(name, type, size, mimetype, created, last_modified)`` of each child of ``parent``.

    Tuples, not dicts, and never the content: a listing of 10,000 files is one index scan.
    """
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT name, type, size, mimetype, created, last_modified FROM workspace_items "
        "WHERE workspace_id = %s AND parent = %s ORDER BY name",
        [workspace_id, parent],
        binary=True,
    )
    return await cur.fetchall()


async def subtree(conn: Connection, workspace_id: uuid.UUID, path: str) -> AsyncIterator[TreeRow]:
    """The item at ``path`` and everything under it ('': the whole workspace), in path order: a
    row per part of each file's content, so that no file is ever whole in memory.

    A server-side cursor reads a few parts at a time: ``conn`` must be in a transaction, and
    is busy until the iteration ends.
    """
    async with conn.cursor(name="subtree") as cursor:
        cursor.itersize = 16  # parts are up to 1 MB: a few at a time in memory
        await cursor.execute(
            sql.SQL(
                """SELECT i.path, i.type, i.size, i.last_modified, p.data
                   FROM workspace_items i
                   LEFT JOIN content_parts p ON p.content_id = i.content_id
                   WHERE i.workspace_id = %(ws)s AND (%(path)s = '' OR {subtree})
                   ORDER BY i.path, p.seq"""
            ).format(subtree=IN_SUBTREE),
            {"ws": workspace_id, "path": path},
            binary=True,  # bytea as is, not as hex text
        )
        async for row in cursor:
            yield cast(TreeRow, row)


# --- writing -------------------------------------------------------------------------------


async def _require_directory(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """``NotFound`` unless ``path`` is a directory (the root always is)."""
    if path and await item_type(conn, workspace_id, path) != "directory":
        msg = f"No such directory: {path}"
        raise NotFound(msg)


async def _current(conn: Connection, workspace_id: uuid.UUID, path: str) -> ItemRow | None:
    """The item at ``path``, locked for the write that follows, or None."""
    cur = await conn.execute(_LOCK_ITEM, [workspace_id, path])
    return cast(ItemRow | None, await cur.fetchone())


async def replaceable(conn: Connection, workspace_id: uuid.UUID, path: str) -> ItemRow | None:
    """The file a write to ``path`` replaces (locked), None if new; refuses directories."""
    await _require_directory(conn, workspace_id, paths.split(path)[0])
    old = await _current(conn, workspace_id, path)
    _refuse_directory(old, path)
    return old


def _refuse_directory(old: ItemRow | None, path: str) -> None:
    if old is not None and old["type"] == "directory":
        msg = f"Cannot write a file over the directory {path}."
        raise InvalidInput(msg)


@dataclass(frozen=True)
class WriteLock:
    """The statements of ``send_write_lock``, sent: ``read`` waits for their answers."""

    path: str
    parent: str
    workspace: writes.Cursor
    parent_type: writes.Cursor | None
    current: writes.Cursor

    async def read(self) -> tuple[int, ItemRow | None]:
        """``(bytes_used, file replaced)``: ``NotFound`` without the workspace or the parent
        directory, ``InvalidInput`` if ``path`` is a directory."""
        locked = await self.workspace.fetchone()
        if locked is None:
            msg = "No such workspace."
            raise NotFound(msg)
        if self.parent_type is not None:
            found = await self.parent_type.fetchone()
            if found is None or found["type"] != "directory":
                msg = f"No such directory: {self.parent}"
                raise NotFound(msg)
        old = cast(ItemRow | None, await self.current.fetchone())
        _refuse_directory(old, self.path)
        return int(locked["bytes_used"]), old


async def send_write_lock(conn: Connection, workspace_id: uuid.UUID, path: str) -> WriteLock:
    """Send ``lock_workspace`` and ``replaceable`` at once, without waiting for answers.

    In a pipelined transaction the statements sent next travel with these, so that a write
    pays one round trip for its locks and its work (every save and chunk does); a refused
    write raises in ``read`` and rolls back. Locks are taken in the usual order: the
    workspace, then the item.
    """
    parent = paths.split(path)[0]
    return WriteLock(
        path=path,
        parent=parent,
        workspace=await conn.execute(writes.LOCK_WORKSPACE, [workspace_id]),
        parent_type=await conn.execute(_ITEM_TYPE, [workspace_id, parent]) if parent else None,
        current=await conn.execute(_LOCK_ITEM, [workspace_id, path]),
    )


async def _check_moved_paths_fit(
    conn: Connection, workspace_id: uuid.UUID, path: str, new_path: str
) -> None:
    """``InvalidInput`` if moving ``path``'s subtree to ``new_path`` makes a path too long."""
    growth = len(new_path.encode()) - len(path.encode())
    if growth <= 0:
        return
    cur = await conn.execute(
        sql.SQL(
            """SELECT coalesce(max(octet_length(path)), 0) AS longest FROM workspace_items
               WHERE workspace_id = %(ws)s AND {subtree}"""
        ).format(subtree=IN_SUBTREE),
        {"ws": workspace_id, "path": path},
    )
    row = await cur.fetchone()
    assert row is not None  # noqa: S101 (an aggregate always has a row)
    if int(row["longest"]) + growth > paths.MAX_PATH_BYTES:
        msg = (
            f"Cannot put {path} at {new_path}: a path inside it would be longer than "
            f"{paths.MAX_PATH_BYTES} bytes."
        )
        raise InvalidInput(msg)


def _upsert_query(source: sql.Composable, *, keep_held: bool = False) -> sql.Composed:
    """The statement of ``upsert``; ``keep_held``: a file that holds the source's bytes
    already (same sha256) keeps its content, and is only dated anew."""
    content = (
        sql.SQL(
            "CASE WHEN i.sha256 = excluded.sha256 THEN i.content_id ELSE excluded.content_id END"
        )
        if keep_held
        else sql.SQL("excluded.content_id")
    )
    return sql.SQL(
        """WITH src AS ({source}), t AS (SELECT clock_timestamp() AS now)
        INSERT INTO workspace_items AS i (workspace_id, path, parent, name, type, content_id,
                                          size, sha256, mimetype, created, last_modified)
        SELECT %(ws)s, %(path)s, %(parent)s, %(name)s, %(type)s, src.content_id,
               src.size, src.sha256, %(mimetype)s, t.now, t.now
        FROM src, t
        ON CONFLICT (workspace_id, path) DO UPDATE SET
            type = excluded.type, content_id = {content}, size = excluded.size,
            sha256 = excluded.sha256, mimetype = excluded.mimetype,
            last_modified = greatest(excluded.last_modified,
                                     i.last_modified + interval '1 millisecond')
        RETURNING {cols}"""
    ).format(source=source, content=content, cols=_ITEM_COLUMNS)


# A new content, as ``writes.store_content`` leaves it (nothing is fetched before the upsert);
# no row once the workspace is gone, so that a write sent with its lock fails in ``read``.
_NEW_CONTENT = sql.SQL(
    "SELECT currval('content_ids') AS content_id, %(size)s::bigint AS size, "
    "%(sha256)s::bytea AS sha256 FROM workspaces WHERE id = %(ws)s"
)
_WRITE_FILE = _upsert_query(_NEW_CONTENT, keep_held=True)


def _upsert_params(workspace_id: uuid.UUID, path: str, params: dict[str, Any]) -> dict[str, Any]:
    parent, name = paths.split(path)
    return {
        **params,
        "ws": workspace_id,
        "path": path,
        "parent": parent,
        "name": name,
        "type": file_type(path),
        "mimetype": file_mimetype(path),
    }


async def upsert(
    conn: Connection,
    workspace_id: uuid.UUID,
    path: str,
    source: sql.Composable,
    params: dict[str, Any],
) -> ItemRow:
    """Point the file at ``path`` to the content ``source`` names (a query of ``content_id,
    size, sha256``), creating the file if needed.

    An upload's chunks, a copy or a checkpoint are contents already stored: no bytes move.
    ``last_modified`` grows by at least 1 ms on every write, so clients that compare it at
    millisecond precision always see a change.
    """
    return await upserted(await send_upsert(conn, workspace_id, path, source, params), path)


async def send_upsert(
    conn: Connection,
    workspace_id: uuid.UUID,
    path: str,
    source: sql.Composable,
    params: dict[str, Any],
) -> writes.Cursor:
    """``upsert``, sent: ``upserted`` reads the file written."""
    return await conn.execute(_upsert_query(source), _upsert_params(workspace_id, path, params))


async def upserted(cur: writes.Cursor, path: str) -> ItemRow:
    """The file an upsert wrote; ``NotFound`` if its source had no row (what it named is
    gone)."""
    row = await cur.fetchone()
    if row is None:
        msg = f"Nothing to write to {path}."
        raise NotFound(msg)
    return cast(ItemRow, row)


async def write_file(
    conn: Connection,
    workspace_id: uuid.UUID,
    path: str,
    content: bytes,
    sha256: bytes,
    *,
    quota: int,
    if_match: Sequence[str] | None = None,
) -> ItemRow:
    """Create or replace the file at ``path``; its parent directory must exist.

    ``if_match``: the client's entity tags (sha256 hex, or '*'); the file is written only if the
    stored one matches, checked under the row lock. The bytes the file holds already (a save
    with no change) are not stored again: the file is only dated anew.

    Every statement is sent before any answer is read, so in a pipelined transaction the
    locks, the content, the file and the quota's reading cost one round trip. The checks
    then run on the answers; a refused write raises, and its transaction rolls back.
    """
    lock = await send_write_lock(conn, workspace_id, path)
    await writes.store_content(conn, workspace_id, content, unless_held_by=(path, sha256))
    saved = await conn.execute(
        _WRITE_FILE,
        _upsert_params(workspace_id, path, {"size": len(content), "sha256": sha256}),
    )
    # The replaced content stays stored if a checkpoint or a copy keeps it: the quota is
    # checked on what the workspace stores once the file is written.
    grown = await writes.send_bytes_used(conn, workspace_id) if quota > 0 else None
    bytes_used, old = await lock.read()
    writes.check_if_match(old, if_match, path)
    writes.check_quota(bytes_used, len(content) - (old["size"] if old else 0), quota, path)
    row = await upserted(saved, path)
    if grown is not None:
        await writes.check_grown(grown, bytes_used, quota, path)
    return row


async def make_directory(conn: Connection, workspace_id: uuid.UUID, path: str) -> ItemRow:
    """Create the directory ``path`` (its parent must exist); an existing one is kept as is."""
    await writes.lock_workspace(conn, workspace_id)
    await _require_directory(conn, workspace_id, paths.split(path)[0])
    old = await _current(conn, workspace_id, path)
    if old is not None:
        if old["type"] != "directory":
            msg = f"Not a directory: {path}"
            raise InvalidInput(msg)
        return old
    parent, name = paths.split(path)
    cur = await conn.execute(
        sql.SQL(
            """INSERT INTO workspace_items (workspace_id, path, parent, name, type)
               VALUES (%s, %s, %s, %s, 'directory') RETURNING {cols}"""
        ).format(cols=_ITEM_COLUMNS),
        [workspace_id, path, parent, name],
    )
    return cast(ItemRow, await cur.fetchone())


async def make_directories(conn: Connection, workspace_id: uuid.UUID, path: str) -> list[ItemRow]:
    """Create the directory ``path`` and its missing ancestors, as ``os.makedirs`` does.

    Returns the directories made, outermost first; ``InvalidInput`` if one of them is a file.
    """
    made: list[ItemRow] = []
    current = ""
    for name in path.split("/") if path else ():
        current = paths.join(current, name)
        kind = await item_type(conn, workspace_id, current)
        if kind is None:
            made.append(await make_directory(conn, workspace_id, current))
        elif kind != "directory":
            msg = f"Not a directory: {current}"
            raise InvalidInput(msg)
    return made


# --- deleting, renaming, copying -----------------------------------------------------------


async def delete_item(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Delete a file, or a directory with everything in it, and their checkpoints."""
    await writes.lock_workspace(conn, workspace_id)
    params = {"ws": workspace_id, "path": path}
    cur = await conn.execute(
        sql.SQL(
            """WITH gone AS (DELETE FROM workspace_items
                             WHERE workspace_id = %(ws)s AND {subtree} RETURNING 1)
               SELECT count(*) AS n FROM gone"""
        ).format(subtree=IN_SUBTREE),
        params,
    )
    row = await cur.fetchone()
    assert row is not None  # noqa: S101 (an aggregate always has a row)
    if row["n"] == 0:
        msg = f"File or directory does not exist: {path}"
        raise NotFound(msg)
    for table in ("checkpoints", "uploads"):
        await conn.execute(
            sql.SQL("DELETE FROM {table} WHERE workspace_id = %(ws)s AND {subtree}").format(
                table=sql.Identifier(table), subtree=IN_SUBTREE
            ),
            params,
        )


async def rename_item(
    conn: Connection, workspace_id: uuid.UUID, old_path: str, new_path: str
) -> None:
    """Move a file, or a directory with all its descendants, and their checkpoints.

    ``Conflict`` if ``new_path`` exists (nothing is overwritten); its parent must exist.
    """
    await writes.lock_workspace(conn, workspace_id)
    kind = await item_type(conn, workspace_id, old_path)
    if kind is None:
        msg = f"File or directory does not exist: {old_path}"
        raise NotFound(msg)
    if new_path.startswith(old_path + "/"):
        msg = f"Cannot move {old_path} into itself."
        raise InvalidInput(msg)
    if await item_type(conn, workspace_id, new_path) is not None:
        msg = f"File already exists: {new_path}"
        raise Conflict(msg)
    new_parent, new_name = paths.split(new_path)
    await _require_directory(conn, workspace_id, new_parent)
    await _check_moved_paths_fit(conn, workspace_id, old_path, new_path)
    params = {
        "ws": workspace_id,
        "path": old_path,
        "new": new_path,
        "new_parent": new_parent,
        "new_name": new_name,
        "new_type": kind if kind == "directory" else file_type(new_path),
        "new_mimetype": None if kind == "directory" else file_mimetype(new_path),
    }
    # One statement moves the whole subtree: a prefix swap on path and parent.
    await conn.execute(
        sql.SQL(
            """UPDATE workspace_items SET
                   path = %(new)s || substr(path, length(%(path)s) + 1),
                   parent = CASE WHEN path = %(path)s THEN %(new_parent)s
                                 ELSE %(new)s || substr(parent, length(%(path)s) + 1) END,
                   name = CASE WHEN path = %(path)s THEN %(new_name)s ELSE name END,
                   type = CASE WHEN path = %(path)s THEN %(new_type)s ELSE type END,
                   mimetype = CASE WHEN path = %(path)s THEN %(new_mimetype)s ELSE mimetype END
               WHERE workspace_id = %(ws)s AND {subtree}"""
        ).format(subtree=IN_SUBTREE),
        params,
    )
    for table in ("checkpoints", "uploads"):
        await conn.execute(
            sql.SQL(
                """UPDATE {table} SET path = %(new)s || substr(path, length(%(path)s) + 1)
                   WHERE workspace_id = %(ws)s AND {subtree}"""
            ).format(table=sql.Identifier(table), subtree=IN_SUBTREE),
            params,
        )


async def copy_item(
    conn: Connection, workspace_id: uuid.UUID, from_path: str, to_path: str, *, quota: int
) -> ItemRow:
    """Copy a file (replacing a file at ``to_path``) or a whole directory (to a new path).

    Copies share their originals' contents: no bytes move, and none count against the quota.
    """
    bytes_used = await writes.lock_workspace(conn, workspace_id)
    kind = await item_type(conn, workspace_id, from_path)
    if kind is None:
        msg = f"No such file or directory: {from_path}"
        raise NotFound(msg)
    if kind != "directory":
        await replaceable(conn, workspace_id, to_path)
        row = await upsert(
            conn,
            workspace_id,
            to_path,
            sql.SQL(
                "SELECT content_id, size, sha256 FROM workspace_items "
                "WHERE workspace_id = %(ws)s AND path = %(from)s"
            ),
            {"from": from_path},
        )
        await writes.check_growth(conn, workspace_id, bytes_used, quota, to_path)
        return row

    to_parent, to_name = paths.split(to_path)
    await _require_directory(conn, workspace_id, to_parent)
    if await item_type(conn, workspace_id, to_path) is not None:
        msg = f"File already exists: {to_path}"
        raise Conflict(msg)
    await _check_moved_paths_fit(conn, workspace_id, from_path, to_path)
    params = {
        "ws": workspace_id,
        "path": from_path,
        "to": to_path,
        "to_parent": to_parent,
        "to_name": to_name,
    }
    # The SELECT reads the tree as it was, so copying a directory into itself terminates.
    await conn.execute(
        sql.SQL(
            """INSERT INTO workspace_items (workspace_id, path, parent, name, type, content_id,
                                            size, sha256, mimetype)
               SELECT workspace_id, %(to)s || substr(path, length(%(path)s) + 1),
                      CASE WHEN path = %(path)s THEN %(to_parent)s
                           ELSE %(to)s || substr(parent, length(%(path)s) + 1) END,
                      CASE WHEN path = %(path)s THEN %(to_name)s ELSE name END,
                      type, content_id, size, sha256, mimetype
               FROM workspace_items WHERE workspace_id = %(ws)s AND {subtree}"""
        ).format(subtree=IN_SUBTREE),
        params,
    )
    await writes.check_growth(conn, workspace_id, bytes_used, quota, to_path)
    copied = await _current(conn, workspace_id, to_path)
    assert copied is not None  # noqa: S101 (inserted above)
    return copied
