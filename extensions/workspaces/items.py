"""SQL of workspace files: items, checkpoints and uploads. No transactions of its own.

Paths given to these functions are canonical (``paths.canonical``). Every function that changes a
workspace's files first locks its ``workspaces`` row, so writes to one workspace are serialised:
a save and the deletion or renaming of its parent directory can never interleave, and
``workspaces.bytes_used`` (the quota) is read and checked by one writer at a time.

``bytes_used`` is the length of every content part the workspace stores (files, checkpoints and
uploads in progress; a content shared by several of them counts once): triggers on
``content_parts`` (migration 0008) keep it, so code here only checks it.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict, cast

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow, tuple_row

from extensions.workspaces import paths
from platform_server.db import Connection
from platform_server.errors import (
    Conflict,
    EditConflict,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    TooLarge,
)

# An upload idle this long (seconds) is abandoned: its chunks are dropped when another starts.
UPLOAD_EXPIRY_SECONDS = 3600
# Content is stored in parts of this size (bytes); an upload's parts are its chunks.
PART_SIZE = 1024 * 1024
_THREAD_THRESHOLD = 1024 * 1024
# The owner of the workspaces that the standalone mode (a stock `jupyter server`) serves.
STANDALONE_OWNER = "standalone"


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


class CheckpointRow(TypedDict):
    """One checkpoint: its id and the last_modified of the file it saved."""

    id: int
    last_modified: datetime


_ITEM_COLUMNS = sql.SQL("path, type, size, sha256, mimetype, created, last_modified")
_ITEM_TYPE = "SELECT type FROM workspace_items WHERE workspace_id = %s AND path = %s"
_LOCK_ITEM = sql.SQL(
    "SELECT {cols} FROM workspace_items WHERE workspace_id = %s AND path = %s FOR UPDATE"
).format(cols=_ITEM_COLUMNS)
# NO KEY UPDATE: the lock writers need, without blocking foreign-key checks.
_LOCK_WORKSPACE = "SELECT bytes_used FROM workspaces WHERE id = %s FOR NO KEY UPDATE"


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


def _subtree() -> sql.Composable:
    """``path`` is %(path)s or one of its descendants: a range in "C" collation, no LIKE."""
    return sql.SQL("(path = %(path)s OR (path >= %(path)s || '/' AND path < %(path)s || '0'))")


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


# --- writing -------------------------------------------------------------------------------


async def lock_workspace(conn: Connection, workspace_id: uuid.UUID) -> int:
    """Lock the workspace's row until the transaction ends; return its ``bytes_used``."""
    cur = await conn.execute(_LOCK_WORKSPACE, [workspace_id])
    row = await cur.fetchone()
    if row is None:
        msg = "No such workspace."
        raise NotFound(msg)
    return int(row["bytes_used"])


async def _require_directory(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """``NotFound`` unless ``path`` is a directory (the root always is)."""
    if path and await item_type(conn, workspace_id, path) != "directory":
        msg = f"No such directory: {path}"
        raise NotFound(msg)


async def _current(conn: Connection, workspace_id: uuid.UUID, path: str) -> ItemRow | None:
    """The item at ``path``, locked for the write that follows, or None."""
    cur = await conn.execute(_LOCK_ITEM, [workspace_id, path])
    return cast(ItemRow | None, await cur.fetchone())


async def _replaceable(conn: Connection, workspace_id: uuid.UUID, path: str) -> ItemRow | None:
    """The file a write to ``path`` replaces (locked), None if new; refuses directories."""
    await _require_directory(conn, workspace_id, paths.split(path)[0])
    old = await _current(conn, workspace_id, path)
    _refuse_directory(old, path)
    return old


def _refuse_directory(old: ItemRow | None, path: str) -> None:
    if old is not None and old["type"] == "directory":
        msg = f"Cannot write a file over the directory {path}."
        raise InvalidInput(msg)


async def lock_for_write(
    conn: Connection, workspace_id: uuid.UUID, path: str
) -> tuple[int, ItemRow | None]:
    """``lock_workspace`` and ``_replaceable`` at once: ``(bytes_used, file replaced)``.

    The three statements are sent before any result is read, so in a pipelined transaction
    they cost one round trip (every save pays this). Locks are taken in the usual order:
    the workspace, then the item.
    """
    parent = paths.split(path)[0]
    workspace = await conn.execute(_LOCK_WORKSPACE, [workspace_id])
    parent_type = await conn.execute(_ITEM_TYPE, [workspace_id, parent]) if parent else None
    current = await conn.execute(_LOCK_ITEM, [workspace_id, path])
    locked = await workspace.fetchone()
    if locked is None:
        msg = "No such workspace."
        raise NotFound(msg)
    if parent_type is not None:
        found = await parent_type.fetchone()
        if found is None or found["type"] != "directory":
            msg = f"No such directory: {parent}"
            raise NotFound(msg)
    old = cast(ItemRow | None, await current.fetchone())
    _refuse_directory(old, path)
    return int(locked["bytes_used"]), old


def _check_if_match(old: ItemRow | None, if_match: Sequence[str] | None, path: str) -> None:
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


def _check_quota(bytes_used: int, delta: int, quota: int, path: str) -> None:
    """``QuotaExceeded`` if growing the workspace by ``delta`` bytes takes it over ``quota``."""
    if quota > 0 and delta > 0 and bytes_used + delta > quota:
        msg = (
            f"Cannot save {path}: the workspace would store {_human(bytes_used + delta)}, over "
            f"its quota of {_human(quota)}. Delete some files or checkpoints first."
        )
        raise QuotaExceeded(msg)


async def _check_growth(
    conn: Connection, workspace_id: uuid.UUID, before: int, quota: int, path: str
) -> None:
    """``_check_quota`` of what this transaction's writes stored, once they are done.

    Called after a write, with ``before`` the ``bytes_used`` read when the workspace was
    locked: only then is it known whether the content a write replaced is released or still
    kept by a checkpoint or a copy. The caller's transaction then rolls back.
    """
    if quota <= 0:
        return
    cur = await conn.execute("SELECT bytes_used FROM workspaces WHERE id = %s", [workspace_id])
    row = await cur.fetchone()
    assert row is not None  # noqa: S101 (the workspace is locked)
    _check_quota(before, int(row["bytes_used"]) - before, quota, path)


def check_size(size: int, max_size: int, path: str) -> None:
    """``TooLarge`` if a file of ``size`` bytes is over ``max_size`` (0: no limit)."""
    if max_size > 0 and size > max_size:
        msg = f"Cannot save {path}: files are limited to {_human(max_size)}."
        raise TooLarge(msg)


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
        ).format(subtree=_subtree()),
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


async def _upsert(
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
    parent, name = paths.split(path)
    cur = await conn.execute(
        sql.SQL(
            """WITH src AS ({source}), t AS (SELECT clock_timestamp() AS now)
            INSERT INTO workspace_items AS i (workspace_id, path, parent, name, type, content_id,
                                              size, sha256, mimetype, created, last_modified)
            SELECT %(ws)s, %(path)s, %(parent)s, %(name)s, %(type)s, src.content_id,
                   src.size, src.sha256, %(mimetype)s, t.now, t.now
            FROM src, t
            ON CONFLICT (workspace_id, path) DO UPDATE SET
                type = excluded.type, content_id = excluded.content_id, size = excluded.size,
                sha256 = excluded.sha256, mimetype = excluded.mimetype,
                last_modified = greatest(excluded.last_modified,
                                         i.last_modified + interval '1 millisecond')
            RETURNING {cols}"""
        ).format(source=source, cols=_ITEM_COLUMNS),
        {
            **params,
            "ws": workspace_id,
            "path": path,
            "parent": parent,
            "name": name,
            "type": file_type(path),
            "mimetype": file_mimetype(path),
        },
    )
    row = await cur.fetchone()
    if row is None:  # the source had no row: what it named is gone
        msg = f"Nothing to write to {path}."
        raise NotFound(msg)
    return cast(ItemRow, row)


async def _touch(conn: Connection, workspace_id: uuid.UUID, path: str) -> ItemRow:
    """Mark the file at ``path`` as saved now, as ``_upsert`` dates a write."""
    cur = await conn.execute(
        sql.SQL(
            """UPDATE workspace_items
               SET last_modified = greatest(clock_timestamp(),
                                            last_modified + interval '1 millisecond')
               WHERE workspace_id = %s AND path = %s RETURNING {cols}"""
        ).format(cols=_ITEM_COLUMNS),
        [workspace_id, path],
    )
    return cast(ItemRow, await cur.fetchone())


async def _ensure_checkpoint(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Checkpoint the file at ``path`` unless it has a checkpoint already."""
    await conn.execute(
        """INSERT INTO checkpoints (workspace_id, path, type, content_id, size, sha256,
                                    last_modified)
           SELECT workspace_id, path, type, content_id, size, sha256, last_modified
           FROM workspace_items WHERE workspace_id = %(ws)s AND path = %(path)s
             AND NOT EXISTS (SELECT FROM checkpoints
                             WHERE workspace_id = %(ws)s AND path = %(path)s)""",
        {"ws": workspace_id, "path": path},
    )


async def store_content(conn: Connection, workspace_id: uuid.UUID, data: bytes) -> None:
    """Store ``data`` as a new content of the workspace, in parts; its id is then
    ``currval('content_ids')`` on this connection (nothing is fetched, so a pipelined
    transaction does not wait here)."""
    await conn.execute("SELECT nextval('content_ids')")
    view = memoryview(data)
    for seq, start in enumerate(range(0, len(data), PART_SIZE), start=1):
        await conn.execute(
            """INSERT INTO content_parts (content_id, seq, data, workspace_id)
               VALUES (currval('content_ids'), %s, %s, %s)""",
            [seq, view[start : start + PART_SIZE], workspace_id],
        )


async def write_file(
    conn: Connection,
    workspace_id: uuid.UUID,
    path: str,
    content: bytes,
    sha256: bytes,
    *,
    quota: int,
    if_match: Sequence[str] | None = None,
    checkpoint_if_none: bool = False,
) -> ItemRow:
    """Create or replace the file at ``path``; its parent directory must exist.

    ``if_match``: the client's entity tags (sha256 hex, or '*'); the file is written only if the
    stored one matches, checked under the row lock. ``checkpoint_if_none``: make a first
    checkpoint of the new content if the file has none (Jupyter does so for notebooks).
    """
    bytes_used, old = await lock_for_write(conn, workspace_id, path)
    _check_if_match(old, if_match, path)
    delta = len(content) - (old["size"] if old else 0)
    _check_quota(bytes_used, delta, quota, path)
    if old is not None and old["sha256"] == sha256:
        # The same bytes again (a save with no change): a new date, and no content rewritten.
        row = await _touch(conn, workspace_id, path)
    else:
        # Nothing here waits for an answer until the upsert's row: in a pipelined transaction,
        # the parts and the file travel together.
        await store_content(conn, workspace_id, content)
        row = await _upsert(
            conn,
            workspace_id,
            path,
            sql.SQL(
                "SELECT currval('content_ids') AS content_id, %(size)s::bigint AS size, "
                "%(sha256)s::bytea AS sha256"
            ),
            {"size": len(content), "sha256": sha256},
        )
        # The replaced content stays stored if a checkpoint or a copy keeps it.
        await _check_growth(conn, workspace_id, bytes_used, quota, path)
    if checkpoint_if_none:
        await _ensure_checkpoint(conn, workspace_id, path)
    return row


async def make_directory(conn: Connection, workspace_id: uuid.UUID, path: str) -> ItemRow:
    """Create the directory ``path`` (its parent must exist); an existing one is kept as is."""
    await lock_workspace(conn, workspace_id)
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


# --- chunked uploads -----------------------------------------------------------------------


class UploadState(TypedDict):
    """An upload in progress: its content (chunk n is part n), the bytes and last chunk so far,
    how many chunk writes it has had (any replica's), and the bytes of the chunk being sent
    again (0 if it is new)."""

    content_id: int
    received: int
    last: int
    writes: int
    replaced: int


class UploadDigests:
    """Running SHA-256 of the uploads this process received every chunk of, in order.

    With it, the last chunk of an upload needs no second read of the file. An entry is trusted
    only while the upload's write count in PostgreSQL matches the chunks it has seen: a chunk
    sent to another replica, sent twice, or out of order drops it, and the digest is read
    from the stored parts instead.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._running: dict[int, tuple[int, int, Any]] = {}  # content id: (seq, writes, hash)

    def chunk_stored(self, content_id: int, seq: int, writes: int, data: bytes) -> None:
        """Note a committed chunk."""
        entry = self._running.pop(content_id, None)
        if seq == 1 and writes == 1:
            running = hashlib.sha256()
        elif entry is not None and entry[:2] == (seq - 1, writes - 1):
            running = entry[2]
        else:
            return
        running.update(data)
        if len(self._running) >= self.size:
            del self._running[next(iter(self._running))]  # the oldest
        self._running[content_id] = (seq, writes, running)

    def finish(self, upload: UploadState, data: bytes) -> bytes | None:
        """The digest of the upload with its last chunk ``data``, if every chunk was seen."""
        entry = self._running.pop(upload["content_id"], None)
        if entry is None or entry[:2] != (upload["last"], upload["writes"]):
            return None
        running = entry[2]
        running.update(data)
        return cast(bytes, running.digest())


async def _upload_state(
    conn: Connection, workspace_id: uuid.UUID, path: str, *, besides: int = 0
) -> UploadState | None:
    """The upload in progress to ``path`` (its chunks but chunk ``besides``), or None."""
    cur = await conn.execute(
        """SELECT u.content_id, u.writes,
                  coalesce(sum(octet_length(p.data)) FILTER (WHERE p.seq <> %(besides)s), 0)
                      AS received,
                  coalesce(sum(octet_length(p.data)) FILTER (WHERE p.seq = %(besides)s), 0)
                      AS replaced,
                  coalesce(max(p.seq), 0) AS last
           FROM uploads u LEFT JOIN content_parts p ON p.content_id = u.content_id
           WHERE u.workspace_id = %(ws)s AND u.path = %(path)s
           GROUP BY u.content_id, u.writes""",
        {"ws": workspace_id, "path": path, "besides": besides},
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return {
        "content_id": int(row["content_id"]),
        "received": int(row["received"]),
        "last": int(row["last"]),
        "writes": int(row["writes"]),
        "replaced": int(row["replaced"]),
    }


async def append_chunk(
    conn: Connection,
    workspace_id: uuid.UUID,
    path: str,
    chunk: int,
    data: bytes,
    *,
    max_size: int,
    quota: int,
    if_match: Sequence[str] | None = None,
) -> tuple[int, int, int]:
    """Store chunk ``chunk`` (1, 2, ...) of an upload to ``path``; return the upload's content
    id, its write count and the bytes received.

    Chunk 1 starts the upload over; a chunk sent again replaces itself. The size limit and the
    quota are checked as chunks arrive (``TooLarge``; the caller then drops the upload with
    ``discard_upload``). The stored file is untouched until ``finish_upload``.
    """
    bytes_used, old = await lock_for_write(conn, workspace_id, path)
    if chunk == 1:
        _check_if_match(old, if_match, path)
        # This path's previous upload, and abandoned ones, go (with their parts: triggers).
        await conn.execute(
            """DELETE FROM uploads WHERE workspace_id = %(ws)s AND (path = %(path)s
               OR updated < now() - make_interval(secs => %(idle)s))""",
            {"ws": workspace_id, "path": path, "idle": UPLOAD_EXPIRY_SECONDS},
        )
        bytes_used = await lock_workspace(conn, workspace_id)  # less what those held
        received = replaced = 0
    else:
        upload = await _upload_state(conn, workspace_id, path, besides=chunk)
        if upload is None:
            msg = f"No upload to {path} is in progress: send chunk 1 first."
            raise InvalidInput(msg)
        received, replaced = upload["received"], upload["replaced"]
    total = received + len(data)
    check_size(total, max_size, path)
    # bytes_used holds every upload in progress (unfinished uploads cannot fill the database)
    # and the file this one replaces, counted as gone: it is, once the upload finishes.
    _check_quota(bytes_used - (old["size"] if old else 0), len(data) - replaced, quota, path)
    cur = await conn.execute(
        """INSERT INTO uploads (workspace_id, path, content_id)
           VALUES (%(ws)s, %(path)s, nextval('content_ids'))
           ON CONFLICT (workspace_id, path)
           DO UPDATE SET updated = clock_timestamp(), writes = uploads.writes + 1
           RETURNING content_id, writes""",
        {"ws": workspace_id, "path": path},
    )
    await conn.execute(
        """INSERT INTO content_parts (content_id, seq, data, workspace_id)
           VALUES ((SELECT content_id FROM uploads WHERE workspace_id = %(ws)s AND path = %(path)s),
                   %(seq)s, %(data)s, %(ws)s)
           ON CONFLICT (content_id, seq) DO UPDATE SET data = excluded.data""",
        {"ws": workspace_id, "path": path, "seq": chunk, "data": data},
    )
    row = await cur.fetchone()
    assert row is not None  # noqa: S101 (inserted or updated above)
    return int(row["content_id"]), int(row["writes"]), total


async def finish_upload(
    conn: Connection,
    workspace_id: uuid.UUID,
    path: str,
    data: bytes,
    *,
    max_size: int,
    quota: int,
    if_match: Sequence[str] | None = None,
    digests: UploadDigests,
) -> ItemRow:
    """Store the last chunk of an upload to ``path``, and make the upload the file's content.

    No bytes are copied: the chunks are the content's parts. A last chunk with no upload in
    progress is a whole file.
    """
    bytes_used, old = await lock_for_write(conn, workspace_id, path)
    _check_if_match(old, if_match, path)
    upload = await _upload_state(conn, workspace_id, path)
    received = 0 if upload is None else upload["received"]
    total = received + len(data)
    check_size(total, max_size, path)
    # The chunks received are in bytes_used already; the replaced file may be released.
    _check_quota(bytes_used - (old["size"] if old else 0), len(data), quota, path)
    content: sql.Composable
    if upload is None:
        await store_content(conn, workspace_id, data)
        content = sql.SQL("currval('content_ids')")
        digest = await sha256_of(data)
    else:
        await conn.execute(
            """INSERT INTO content_parts (content_id, seq, data, workspace_id)
               VALUES (%s, %s, %s, %s)""",
            [upload["content_id"], upload["last"] + 1, data, workspace_id],
        )
        content = sql.Literal(upload["content_id"])
        digest = digests.finish(upload, data) or await content_digest(conn, upload["content_id"])
    row = await _upsert(
        conn,
        workspace_id,
        path,
        sql.SQL(
            "SELECT {content}::bigint AS content_id, %(size)s::bigint AS size, "
            "%(sha256)s::bytea AS sha256"
        ).format(content=content),
        {"size": total, "sha256": digest},
    )
    # After the upsert: the file holds the content now, so the upload's end keeps its parts.
    await discard_upload(conn, workspace_id, path)
    await _check_growth(conn, workspace_id, bytes_used, quota, path)
    return row


async def sha256_of(data: bytes) -> bytes:
    """The SHA-256 of ``data``; off the event loop when large (1 MB hashes in ~1 ms)."""
    if len(data) > _THREAD_THRESHOLD:
        return await asyncio.to_thread(_sha256, data)
    return _sha256(data)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def content_digest(conn: Connection, content_id: int) -> bytes:
    """The SHA-256 of a stored content, read a few parts at a time (off the event loop)."""
    digest = hashlib.sha256()
    seq = 0
    while True:
        cur = await conn.execute(
            """SELECT seq, data FROM content_parts WHERE content_id = %s AND seq > %s
               ORDER BY seq LIMIT 16""",
            [content_id, seq],
            binary=True,
        )
        rows = await cur.fetchall()
        if not rows:
            return digest.digest()
        for row in rows:
            await asyncio.to_thread(digest.update, row["data"])
        seq = rows[-1]["seq"]


async def discard_upload(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Drop the upload to ``path``, if any (its parts go with it unless the file has them)."""
    # Releasing parts updates bytes_used: the workspace is locked first, as by every writer,
    # so that this and another write never wait on each other's locks in opposite orders.
    await lock_workspace(conn, workspace_id)
    await conn.execute(
        "DELETE FROM uploads WHERE workspace_id = %s AND path = %s", [workspace_id, path]
    )


# --- deleting, renaming, copying -----------------------------------------------------------


async def delete_item(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Delete a file, or a directory with everything in it, and their checkpoints."""
    await lock_workspace(conn, workspace_id)
    params = {"ws": workspace_id, "path": path}
    cur = await conn.execute(
        sql.SQL(
            """WITH gone AS (DELETE FROM workspace_items
                             WHERE workspace_id = %(ws)s AND {subtree} RETURNING 1)
               SELECT count(*) AS n FROM gone"""
        ).format(subtree=_subtree()),
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
                table=sql.Identifier(table), subtree=_subtree()
            ),
            params,
        )


async def rename_item(
    conn: Connection, workspace_id: uuid.UUID, old_path: str, new_path: str
) -> None:
    """Move a file, or a directory with all its descendants, and their checkpoints.

    ``Conflict`` if ``new_path`` exists (nothing is overwritten); its parent must exist.
    """
    await lock_workspace(conn, workspace_id)
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
        ).format(subtree=_subtree()),
        params,
    )
    for table in ("checkpoints", "uploads"):
        await conn.execute(
            sql.SQL(
                """UPDATE {table} SET path = %(new)s || substr(path, length(%(path)s) + 1)
                   WHERE workspace_id = %(ws)s AND {subtree}"""
            ).format(table=sql.Identifier(table), subtree=_subtree()),
            params,
        )


async def copy_item(
    conn: Connection, workspace_id: uuid.UUID, from_path: str, to_path: str, *, quota: int
) -> ItemRow:
    """Copy a file (replacing a file at ``to_path``) or a whole directory (to a new path).

    Copies share their originals' contents: no bytes move, and none count against the quota.
    """
    bytes_used = await lock_workspace(conn, workspace_id)
    kind = await item_type(conn, workspace_id, from_path)
    if kind is None:
        msg = f"No such file or directory: {from_path}"
        raise NotFound(msg)
    if kind != "directory":
        await _replaceable(conn, workspace_id, to_path)
        row = await _upsert(
            conn,
            workspace_id,
            to_path,
            sql.SQL(
                "SELECT content_id, size, sha256 FROM workspace_items "
                "WHERE workspace_id = %(ws)s AND path = %(from)s"
            ),
            {"from": from_path},
        )
        await _check_growth(conn, workspace_id, bytes_used, quota, to_path)
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
        ).format(subtree=_subtree()),
        params,
    )
    await _check_growth(conn, workspace_id, bytes_used, quota, to_path)
    copied = await _current(conn, workspace_id, to_path)
    assert copied is not None  # noqa: S101 (inserted above)
    return copied


# --- checkpoints ---------------------------------------------------------------------------


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
    await lock_workspace(conn, workspace_id)
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


async def restore_checkpoint(
    conn: Connection, workspace_id: uuid.UUID, path: str, checkpoint_id: str, *, quota: int
) -> ItemRow:
    """Write a checkpoint's content back to ``path`` (recreating the file if it was deleted)."""
    cp_id = _checkpoint_id(checkpoint_id, path)
    bytes_used = await lock_workspace(conn, workspace_id)
    cur = await conn.execute(
        """SELECT size FROM checkpoints WHERE id = %s AND workspace_id = %s AND path = %s""",
        [cp_id, workspace_id, path],
    )
    checkpoint = await cur.fetchone()
    if checkpoint is None:
        msg = f"Checkpoint does not exist: {path}@{checkpoint_id}"
        raise NotFound(msg)
    await _replaceable(conn, workspace_id, path)
    row = await _upsert(
        conn,
        workspace_id,
        path,
        sql.SQL("SELECT content_id, size, sha256 FROM checkpoints WHERE id = %(id)s"),
        {"id": cp_id},
    )
    # The checkpoint's content is shared, not copied: this can only release bytes.
    await _check_growth(conn, workspace_id, bytes_used, quota, path)
    return row


async def delete_checkpoint(
    conn: Connection, workspace_id: uuid.UUID, path: str, checkpoint_id: str
) -> None:
    """Delete one checkpoint of ``path``; ``NotFound`` if it has no such checkpoint."""
    await lock_workspace(conn, workspace_id)  # as discard_upload: its content may be released
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
    await lock_workspace(conn, workspace_id)  # as discard_upload: contents may be released
    await conn.execute(
        sql.SQL("DELETE FROM checkpoints WHERE workspace_id = %(ws)s AND {subtree}").format(
            subtree=_subtree()
        ),
        {"ws": workspace_id, "path": path},
    )


# --- standalone mode -----------------------------------------------------------------------


def resolve_workspace(conn: psycopg.Connection[Any], workspace: str) -> uuid.UUID:
    """The id of the workspace a standalone server serves (synchronous: used at start-up).

    ``workspace`` is the id of an existing workspace, or a name: the workspace of that name
    owned by the user ``STANDALONE_OWNER``, both made if missing. That user's password hash
    '!' matches no password, so it can never log in.
    """
    try:
        workspace_id = uuid.UUID(workspace)
    except ValueError:
        pass
    else:
        row = conn.execute("SELECT id FROM workspaces WHERE id = %s", [workspace_id]).fetchone()
        if row is None:
            msg = f"No workspace has the id {workspace_id}."
            raise NotFound(msg)
        return workspace_id

    with conn.transaction():
        conn.execute(
            "INSERT INTO users (username, password_hash) VALUES (%s, '!') ON CONFLICT DO NOTHING",
            [STANDALONE_OWNER],
        )
        # The lock serialises servers starting at once, so they make one workspace, not two.
        owner = conn.execute(
            "SELECT id FROM users WHERE lower(username) = %s FOR UPDATE", [STANDALONE_OWNER]
        ).fetchone()
        assert owner is not None  # noqa: S101 (inserted above)
        found = conn.execute(
            "SELECT id FROM workspaces WHERE owner_id = %s AND name = %s ORDER BY created_at",
            [owner[0], workspace],
        ).fetchone()
        if found is None:
            try:
                found = conn.execute(
                    "INSERT INTO workspaces (owner_id, name) VALUES (%s, %s) RETURNING id",
                    [owner[0], workspace],
                ).fetchone()
            except psycopg.errors.CheckViolation as e:
                msg = f"Invalid workspace name {workspace!r}: 1 to 100 characters, no controls."
                raise InvalidInput(msg) from e
        assert found is not None  # noqa: S101 (inserted above)
        return cast(uuid.UUID, found[0])
