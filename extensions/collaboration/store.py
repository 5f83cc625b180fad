"""SQL of shared documents (migration 0014). No transactions of its own: callers hold one.

Writers of one document take its advisory lock first (``lock_document``), so that its updates'
``seq`` order is their commit order and a reader that saw ``seq`` n has seen every update
before it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import TypedDict, cast

from platform_server.db import Connection

CHANNEL = "collaboration"
# The first key of the documents' advisory locks (two-key locks, apart from the one-key ones
# other parts of the platform take); the second is a hash of the document's key.
LOCK_CLASS = 1_870_014
# Largest NOTIFY payload sent (bytes); PostgreSQL refuses 8000 or more.
MAX_NOTIFY_BYTES = 7900


class DocumentRow(TypedDict):
    """A document's state at its last save."""

    saved_state: bytes
    saved_sha256: bytes


def document_key(workspace_id: uuid.UUID, path: str) -> str:
    """The short name of a document in notifications (a path may be 4096 bytes long)."""
    return hashlib.sha256(f"{workspace_id}/{path}".encode()).hexdigest()[:32]


async def lock_document(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Take the document's lock until the end of ``conn``'s transaction."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
        [LOCK_CLASS, document_key(workspace_id, path)],
    )


async def lock_document_session(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Take the document's lock until ``unlock_document_session`` (or ``conn`` closes)."""
    await conn.execute(
        "SELECT pg_advisory_lock(%s, hashtext(%s))", [LOCK_CLASS, document_key(workspace_id, path)]
    )


async def unlock_document_session(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Release what ``lock_document_session`` took."""
    await conn.execute(
        "SELECT pg_advisory_unlock(%s, hashtext(%s))",
        [LOCK_CLASS, document_key(workspace_id, path)],
    )


async def get_document(conn: Connection, workspace_id: uuid.UUID, path: str) -> DocumentRow | None:
    """The document's saved state, or None when no replica has it open."""
    cur = await conn.execute(
        "SELECT saved_state, saved_sha256 FROM collaboration_documents "
        "WHERE workspace_id = %s AND path = %s",
        [workspace_id, path],
        binary=True,
    )
    return cast(DocumentRow | None, await cur.fetchone())


async def create_document(
    conn: Connection, workspace_id: uuid.UUID, path: str, state: bytes, sha256: bytes
) -> None:
    """Make the document's row, with its first update: ``state``, the seed."""
    await conn.execute(
        "INSERT INTO collaboration_documents (workspace_id, path, saved_state, saved_sha256) "
        "VALUES (%s, %s, %s, %s)",
        [workspace_id, path, state, sha256],
    )
    await append_update(conn, workspace_id, path, state)


async def set_saved(
    conn: Connection, workspace_id: uuid.UUID, path: str, state: bytes, sha256: bytes
) -> None:
    """Record the state the document had when ``sha256``'s text was written to the file."""
    await conn.execute(
        "UPDATE collaboration_documents SET saved_state = %s, saved_sha256 = %s "
        "WHERE workspace_id = %s AND path = %s",
        [state, sha256, workspace_id, path],
    )


async def append_update(conn: Connection, workspace_id: uuid.UUID, path: str, data: bytes) -> int:
    """Store one update and notify the replicas on commit; return its ``seq``."""
    cur = await conn.execute(
        "INSERT INTO collaboration_updates (workspace_id, path, data) VALUES (%s, %s, %s) "
        "RETURNING seq",
        [workspace_id, path, data],
    )
    row = await cur.fetchone()
    assert row is not None  # noqa: S101  (INSERT ... RETURNING returns its row)
    seq = cast(dict[str, int], row)["seq"]
    await notify(conn, {"doc": document_key(workspace_id, path), "seq": seq})
    return seq


async def updates_after(
    conn: Connection, workspace_id: uuid.UUID, path: str, seq: int
) -> list[tuple[int, bytes]]:
    """The document's updates stored after ``seq``, in order."""
    cur = await conn.execute(
        "SELECT seq, data FROM collaboration_updates "
        "WHERE workspace_id = %s AND path = %s AND seq > %s ORDER BY seq",
        [workspace_id, path, seq],
        binary=True,
    )
    rows = await cur.fetchall()
    return [(row["seq"], row["data"]) for row in rows]


async def add_peer(
    conn: Connection, workspace_id: uuid.UUID, path: str, replica: uuid.UUID
) -> None:
    """Note that ``replica`` has the document's room open."""
    await conn.execute(
        "INSERT INTO collaboration_peers (workspace_id, path, replica) VALUES (%s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        [workspace_id, path, replica],
    )


async def remove_peer(
    conn: Connection, workspace_id: uuid.UUID, path: str, replica: uuid.UUID
) -> bool:
    """Note that ``replica`` closed the room; returns whether another replica has it open."""
    await conn.execute(
        "DELETE FROM collaboration_peers WHERE workspace_id = %s AND path = %s AND replica = %s",
        [workspace_id, path, replica],
    )
    cur = await conn.execute(
        "SELECT 1 FROM collaboration_peers WHERE workspace_id = %s AND path = %s LIMIT 1",
        [workspace_id, path],
    )
    return await cur.fetchone() is not None


async def replace_updates(
    conn: Connection, workspace_id: uuid.UUID, path: str, merged: bytes
) -> None:
    """Replace the document's stored updates by ``merged``, all of them in one."""
    await conn.execute(
        "DELETE FROM collaboration_updates WHERE workspace_id = %s AND path = %s",
        [workspace_id, path],
    )
    await conn.execute(
        "INSERT INTO collaboration_updates (workspace_id, path, data) VALUES (%s, %s, %s)",
        [workspace_id, path, merged],
    )


async def delete_document(conn: Connection, workspace_id: uuid.UUID, path: str) -> None:
    """Forget the document: its file is gone."""
    await conn.execute(
        "DELETE FROM collaboration_documents WHERE workspace_id = %s AND path = %s",
        [workspace_id, path],
    )


async def notify_awareness(
    conn: Connection, workspace_id: uuid.UUID, path: str, replica: uuid.UUID, message: bytes
) -> bool:
    """Send an awareness message to the other replicas (never stored); False when it is too
    large for a notification."""
    return await notify(
        conn,
        {
            "doc": document_key(workspace_id, path),
            "replica": str(replica),
            "awareness": base64.b64encode(message).decode(),
        },
    )


async def notify(conn: Connection, payload: dict[str, object]) -> bool:
    """``pg_notify`` on ``CHANNEL``; False (nothing sent) when the payload is too large."""
    text = json.dumps(payload, separators=(",", ":"))
    if len(text) > MAX_NOTIFY_BYTES:
        return False
    await conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, text])
    return True
