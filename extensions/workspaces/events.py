"""Workspace events, published with PostgreSQL ``NOTIFY`` in the transaction that makes them.

A notification is delivered when its transaction commits, and never when it rolls back, so
whoever listens (each replica's ``EventHub``, extensions/sandboxes/events.py, which serves
``WS /w/<uuid>/api/events``) hears every committed change once, whichever replica made it.

Payloads are UTF-8 JSON (not ASCII-escaped: a 4096-byte path of non-ASCII names would triple
in size). PostgreSQL refuses a payload of 8000 bytes or more, so a larger event (a move between
two long paths) is stored in ``large_events`` and its notification carries only its id.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from platform_server.db import Connection
from platform_server.timefmt import isoformat

CHANNEL = "platform_events"
# Largest payload sent as is (bytes); PostgreSQL's limit is 8000, its terminator included.
MAX_NOTIFY_BYTES = 7900
# Seconds a large event's row is kept for listeners to read (writers delete older ones).
LARGE_EVENT_SECONDS = 600
# What editors are told of each of Jupyter's contents actions.
FILE_EVENT_TYPES = {
    "save": "modified",
    "restore": "modified",
    "delete": "deleted",
    "rename": "moved",
    "copy": "created",
}


async def publish(conn: Connection, workspace_id: uuid.UUID, event: dict[str, Any]) -> None:
    """Publish ``event`` for the workspace when ``conn``'s transaction commits."""
    event = {**event, "workspace": str(workspace_id)}
    payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    try:
        size = len(payload.encode())
    except UnicodeEncodeError:  # a lone surrogate (never in a path): escaped, as JSON allows
        payload = json.dumps(event, separators=(",", ":"))
        size = len(payload)
    if size <= MAX_NOTIFY_BYTES:
        await conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])
        return
    # SKIP LOCKED: writers to other workspaces, deleting the same old rows, never wait on
    # each other (nor deadlock).
    await conn.execute(
        """WITH expired AS (
               DELETE FROM large_events WHERE id IN (
                   SELECT id FROM large_events
                   WHERE created < now() - make_interval(secs => %(keep)s)
                   FOR UPDATE SKIP LOCKED)),
           stored AS (INSERT INTO large_events (payload) VALUES (%(payload)s) RETURNING id)
           SELECT pg_notify(%(channel)s,
                            json_build_object('workspace', %(ws)s::text, 'large_event', id)::text)
           FROM stored""",
        {
            "keep": LARGE_EVENT_SECONDS,
            "payload": payload,
            "channel": CHANNEL,
            "ws": str(workspace_id),
        },
    )


async def publish_file_change(
    conn: Connection,
    workspace_id: uuid.UUID,
    action: str,
    path: str,
    *,
    source_path: str | None = None,
    last_modified: datetime | None = None,
) -> None:
    """Publish a contents action (``FILE_EVENT_TYPES``) on ``path``: ``{type, path,
    last_modified}``, with ``old_path`` for a move and no date for a deletion."""
    kind = FILE_EVENT_TYPES[action]
    event: dict[str, Any] = {"type": kind, "path": path}
    if kind == "moved":
        event["old_path"] = source_path
    if kind != "deleted":
        event["last_modified"] = isoformat(last_modified)
    await publish(conn, workspace_id, event)
