"""Chunked uploads (JupyterLab's ``chunk`` 1, 2, ..., -1): their SQL, with no transactions of
its own, and ``UploadDigests``, the running digests of the uploads this process receives.

Chunk *n* is part *n* of the upload's content; the last chunk adds its part and points the file
at that content, so every byte is written once. Writes lock the workspace first, as in ``items``.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any, TypedDict, cast

from psycopg import sql

from extensions.workspaces import items, writes
from platform_server.db import Connection
from platform_server.errors import InvalidInput

# The content an upload's last chunk gives its file: the upload's (its id, a parameter so that
# the statement stays one prepared statement), or the one just stored (NULL id).
_UPLOADED_CONTENT = sql.SQL(
    "SELECT coalesce(%(content_id)s::bigint, currval('content_ids')) AS content_id, "
    "%(size)s::bigint AS size, %(sha256)s::bytea AS sha256"
)


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


async def _send_upload_state(
    conn: Connection, workspace_id: uuid.UUID, path: str, *, besides: int = 0
) -> writes.Cursor:
    """Ask for the upload in progress to ``path`` (its chunks but chunk ``besides``);
    ``_upload_state`` reads the answer."""
    return await conn.execute(
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


async def _upload_state(cur: writes.Cursor) -> UploadState | None:
    """The answer of ``_send_upload_state``: the upload in progress, or None."""
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
    expiry: int,
) -> tuple[int, int, int]:
    """Store chunk ``chunk`` (1, 2, ...) of an upload to ``path``; return the upload's content
    id, its write count and the bytes received.

    Chunk 1 starts the upload over, and drops the workspace's uploads idle for ``expiry``
    seconds or more; a chunk sent again replaces itself. The size limit and the
    quota are checked as chunks arrive (``TooLarge``; the caller then drops the upload with
    ``discard_upload``). The stored file is untouched until ``finish_upload``.

    As in ``items.write_file``, every statement is sent before any answer is read (one round
    trip in a pipelined transaction); the checks run on the answers, and a refused chunk
    rolls back with its transaction.
    """
    lock = await items.send_write_lock(conn, workspace_id, path)
    if chunk == 1:
        # This path's previous upload, and abandoned ones, go (with their parts: triggers).
        await conn.execute(
            """DELETE FROM uploads WHERE workspace_id = %(ws)s AND (path = %(path)s
               OR updated < now() - make_interval(secs => %(idle)s))""",
            {"ws": workspace_id, "path": path, "idle": expiry},
        )
        previous = await writes.send_bytes_used(conn, workspace_id)  # less what those held
    else:
        previous = await _send_upload_state(conn, workspace_id, path, besides=chunk)
    # Sent before the lock's answer: no row (and no error) once the workspace is gone.
    stored = await conn.execute(
        """INSERT INTO uploads (workspace_id, path, content_id)
           SELECT id, %(path)s, nextval('content_ids') FROM workspaces WHERE id = %(ws)s
           ON CONFLICT (workspace_id, path)
           DO UPDATE SET updated = clock_timestamp(), writes = uploads.writes + 1
           RETURNING content_id, writes""",
        {"ws": workspace_id, "path": path},
    )
    await conn.execute(
        """INSERT INTO content_parts (content_id, seq, data, workspace_id)
           SELECT content_id, %(seq)s, %(data)s, workspace_id FROM uploads
           WHERE workspace_id = %(ws)s AND path = %(path)s
           ON CONFLICT (content_id, seq) DO UPDATE SET data = excluded.data""",
        {"ws": workspace_id, "path": path, "seq": chunk, "data": data},
    )
    bytes_used, old = await lock.read()
    if chunk == 1:
        writes.check_if_match(old, if_match, path)
        row = await previous.fetchone()
        assert row is not None  # noqa: S101 (the workspace is locked)
        bytes_used, received, replaced = int(row["bytes_used"]), 0, 0
    else:
        upload = await _upload_state(previous)
        if upload is None:
            msg = f"No upload to {path} is in progress: send chunk 1 first."
            raise InvalidInput(msg)
        received, replaced = upload["received"], upload["replaced"]
    total = received + len(data)
    writes.check_size(total, max_size, path)
    # bytes_used holds every upload in progress (unfinished uploads cannot fill the database)
    # and the file this one replaces, counted as gone: it is, once the upload finishes.
    writes.check_quota(bytes_used - (old["size"] if old else 0), len(data) - replaced, quota, path)
    row = await stored.fetchone()
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
) -> items.ItemRow:
    """Store the last chunk of an upload to ``path``, and make the upload the file's content.

    No bytes are copied: the chunks are the content's parts. A last chunk with no upload in
    progress is a whole file.
    """
    lock = await items.send_write_lock(conn, workspace_id, path)
    state = await _send_upload_state(conn, workspace_id, path)
    bytes_used, old = await lock.read()
    writes.check_if_match(old, if_match, path)
    upload = await _upload_state(state)
    received = 0 if upload is None else upload["received"]
    total = received + len(data)
    writes.check_size(total, max_size, path)
    # The chunks received are in bytes_used already; the replaced file may be released.
    writes.check_quota(bytes_used - (old["size"] if old else 0), len(data), quota, path)
    if upload is None:
        await writes.store_content(conn, workspace_id, data)
        content_id = None  # the content just stored
        digest = await writes.sha256_of(data)
    else:
        content_id = upload["content_id"]
        await conn.execute(
            """INSERT INTO content_parts (content_id, seq, data, workspace_id)
               VALUES (%s, %s, %s, %s)""",
            [content_id, upload["last"] + 1, data, workspace_id],
        )
        digest = digests.finish(upload, data) or await content_digest(conn, content_id)
    saved = await items.send_upsert(
        conn,
        workspace_id,
        path,
        _UPLOADED_CONTENT,
        {"content_id": content_id, "size": total, "sha256": digest},
    )
    # After the upsert: the file holds the content now, so the upload's end keeps its parts.
    await _delete_upload(conn, workspace_id, path)
    grown = await writes.send_bytes_used(conn, workspace_id) if quota > 0 else None
    row = await items.upserted(saved, path)
    if grown is not None:
        await writes.check_grown(grown, bytes_used, quota, path)
    return row


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
    await writes.lock_workspace(conn, workspace_id)
    await _delete_upload(conn, workspace_id, path)


async def _delete_upload(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """``discard_upload`` in a transaction that holds the workspace's lock already."""
    await conn.execute(
        "DELETE FROM uploads WHERE workspace_id = %s AND path = %s", [workspace_id, path]
    )
