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
    expiry: int,
) -> tuple[int, int, int]:
    """Store chunk ``chunk`` (1, 2, ...) of an upload to ``path``; return the upload's content
    id, its write count and the bytes received.

    Chunk 1 starts the upload over, and drops the workspace's uploads idle for ``expiry``
    seconds or more; a chunk sent again replaces itself. The size limit and the
    quota are checked as chunks arrive (``TooLarge``; the caller then drops the upload with
    ``discard_upload``). The stored file is untouched until ``finish_upload``.
    """
    bytes_used, old = await items.lock_for_write(conn, workspace_id, path)
    if chunk == 1:
        writes.check_if_match(old, if_match, path)
        # This path's previous upload, and abandoned ones, go (with their parts: triggers).
        await conn.execute(
            """DELETE FROM uploads WHERE workspace_id = %(ws)s AND (path = %(path)s
               OR updated < now() - make_interval(secs => %(idle)s))""",
            {"ws": workspace_id, "path": path, "idle": expiry},
        )
        bytes_used = await writes.lock_workspace(conn, workspace_id)  # less what those held
        received = replaced = 0
    else:
        upload = await _upload_state(conn, workspace_id, path, besides=chunk)
        if upload is None:
            msg = f"No upload to {path} is in progress: send chunk 1 first."
            raise InvalidInput(msg)
        received, replaced = upload["received"], upload["replaced"]
    total = received + len(data)
    writes.check_size(total, max_size, path)
    # bytes_used holds every upload in progress (unfinished uploads cannot fill the database)
    # and the file this one replaces, counted as gone: it is, once the upload finishes.
    writes.check_quota(bytes_used - (old["size"] if old else 0), len(data) - replaced, quota, path)
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
) -> items.ItemRow:
    """Store the last chunk of an upload to ``path``, and make the upload the file's content.

    No bytes are copied: the chunks are the content's parts. A last chunk with no upload in
    progress is a whole file.
    """
    bytes_used, old = await items.lock_for_write(conn, workspace_id, path)
    writes.check_if_match(old, if_match, path)
    upload = await _upload_state(conn, workspace_id, path)
    received = 0 if upload is None else upload["received"]
    total = received + len(data)
    writes.check_size(total, max_size, path)
    # The chunks received are in bytes_used already; the replaced file may be released.
    writes.check_quota(bytes_used - (old["size"] if old else 0), len(data), quota, path)
    content: sql.Composable
    if upload is None:
        await writes.store_content(conn, workspace_id, data)
        content = sql.SQL("currval('content_ids')")
        digest = await writes.sha256_of(data)
    else:
        await conn.execute(
            """INSERT INTO content_parts (content_id, seq, data, workspace_id)
               VALUES (%s, %s, %s, %s)""",
            [upload["content_id"], upload["last"] + 1, data, workspace_id],
        )
        content = sql.Literal(upload["content_id"])
        digest = digests.finish(upload, data) or await content_digest(conn, upload["content_id"])
    row = await items.upsert(
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
    await writes.check_growth(conn, workspace_id, bytes_used, quota, path)
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
    await conn.execute(
        "DELETE FROM uploads WHERE workspace_id = %s AND path = %s", [workspace_id, path]
    )
