"""PostgreSQL advisory locks that let one replica at a time start a workspace's sandbox, cull,
fill the warm pool, reconcile or check health."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from extensions.sandboxes import store
from platform_server.db import Database

# Keys of the advisory locks that let one replica at a time cull, fill the pool, reconcile.
CULL_LOCK_ID = 7_081_542_017
POOL_LOCK_ID = 7_081_542_018
RECONCILE_LOCK_ID = 7_081_542_019
HEALTH_LOCK_ID = 7_081_542_020


def lock_key(workspace_id: uuid.UUID) -> int:
    """The advisory-lock key of one workspace's start: 64 bits of its id.

    The constant keys above (and the migrations') share this key space, but none can be a
    random (version 4) UUID's, whose seventh byte starts with 4: theirs starts with C.
    """
    return int.from_bytes(workspace_id.bytes[:8], "big", signed=True)


@asynccontextmanager
async def advisory_lock(db: Database, key: int, *, wait: bool) -> AsyncIterator[bool]:
    """Hold a PostgreSQL advisory lock through the block; yield whether it was taken: with
    ``wait``, always (once whoever holds it lets go); without, only if nobody held it.

    It is held on ``Database.dedicated_connection``, never on a pooled connection: the work
    under these locks (a sandbox start, up to ``start_timeout``; a cull round) takes pooled
    connections itself, so as many starts as the pool has connections would otherwise starve
    the pool. Session-level, so that no transaction stays open that long; closing the
    connection releases it.
    """
    async with db.dedicated_connection() as conn:
        if wait:
            await store.advisory_lock(conn, key)
            yield True
        else:
            yield await store.try_advisory_lock(conn, key)
