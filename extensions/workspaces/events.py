"""Workspace events, published with PostgreSQL ``NOTIFY`` in the transaction that makes them.

A notification is delivered when its transaction commits, and never when it rolls back, so
whoever listens (each replica's ``EventHub``, extensions/sandboxes/events.py, which serves
``WS /w/<uuid>/api/events``) hears every committed change once, whichever replica made it.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from extensions.accounts.manager import isoformat
from platform_server.db import Connection

CHANNEL = "platform_events"
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
    payload = json.dumps({**event, "workspace": str(workspace_id)})
    await conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


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
