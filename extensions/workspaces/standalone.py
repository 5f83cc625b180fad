"""Standalone mode (``PostgresContentsManager`` in a stock ``jupyter server``): the workspace it
serves, found or made with its owner in a transaction of its own, and its database pools."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, cast

import psycopg

from extensions.accounts import store as accounts_store
from platform_server.db import Database
from platform_server.errors import InvalidInput, NotFound

# The owner of the workspaces that the standalone mode serves.
STANDALONE_OWNER = "standalone"


def resolve_workspace(conn: psycopg.Connection[Any], workspace: str) -> uuid.UUID:
    """The id of the workspace a standalone server serves (synchronous: used at start-up).

    ``workspace`` is the id of an existing workspace, or a name: the workspace of that name
    owned by the user ``STANDALONE_OWNER``, both made if missing (that user can never log in:
    ``accounts.store.lock_service_user``).
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
        # The lock serialises servers starting at once, so they make one workspace, not two.
        owner_id = accounts_store.lock_service_user(conn, STANDALONE_OWNER)
        found = conn.execute(
            "SELECT id FROM workspaces WHERE owner_id = %s AND name = %s ORDER BY created_at",
            [owner_id, workspace],
        ).fetchone()
        if found is None:
            try:
                found = conn.execute(
                    "INSERT INTO workspaces (owner_id, name) VALUES (%s, %s) RETURNING id",
                    [owner_id, workspace],
                ).fetchone()
            except psycopg.errors.CheckViolation as e:
                msg = f"Invalid workspace name {workspace!r}: 1 to 100 characters, no controls."
                raise InvalidInput(msg) from e
        assert found is not None  # noqa: S101 (inserted above)
        return cast(uuid.UUID, found[0])


class StandalonePools:
    """The pools of standalone managers: one per database URL and event loop in a process.

    Every server a process runs on one loop shares that loop's pool, however many start and
    stop (a test suite starts hundreds). A stock server tells its contents manager nothing when
    it stops, so a pool is released when its loop is found closed: the next pool made closes
    the idle connections of those (their own tasks died with their loops).
    """

    def __init__(self) -> None:
        self._pools: dict[tuple[str, asyncio.AbstractEventLoop | None], Database] = {}

    def get(
        self, url: str, loop: asyncio.AbstractEventLoop | None, log: logging.Logger
    ) -> Database:
        """The pool of ``url`` for servers on ``loop`` (None: whichever loop uses it first)."""
        for key in [key for key in self._pools if key[1] is not None and key[1].is_closed()]:
            self._pools.pop(key).close_abandoned()
        database = self._pools.get((url, loop))
        if database is None:
            database = self._pools[(url, loop)] = Database(url, log=log)
        return database


# The pools of this process.
POOLS = StandalonePools()
