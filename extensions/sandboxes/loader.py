"""Loading a workspace's files from PostgreSQL into a sandbox: one streamed tar."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from extensions.sandboxes import tarstream
from extensions.sandboxes.agent_client import AgentClient
from extensions.workspaces import items
from platform_server.db import Database


async def load_files(
    db: Database, workspace_id: uuid.UUID, client: AgentClient, under: str | None = None
) -> int:
    """Copy the workspace's tree (or the subtree ``under``) from PostgreSQL into the sandbox
    in one streamed request; return how many items it holds."""
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
    count = 0

    async def produce() -> None:
        nonlocal count
        tar, current = tarstream.TarWriter(), None
        try:
            # The cursor lives as long as the sandbox takes the stream: on a connection of its
            # own, so that many loads at once never leave requests without a pooled connection.
            async with db.dedicated_connection() as conn, conn.transaction():
                async for row in items.subtree(conn, workspace_id, under or ""):
                    if row["path"] != current:
                        current = row["path"]
                        await chunks.put(
                            tar.item(current, row["type"], row["size"], row["last_modified"])
                        )
                        count += 1
                    if row["data"]:
                        await chunks.put(row["data"])
            await chunks.put(tar.end())
            await chunks.put(None)
        except BaseException:
            # Cut off (the sandbox stopped taking the stream, or the database failed): end the
            # stream without waiting for room that nobody may make. It is broken anyway: the
            # sandbox refuses a tar without its end.
            if chunks.full():
                chunks.get_nowait()
            chunks.put_nowait(None)
            raise

    async def body(write: Any) -> None:
        while (chunk := await chunks.get()) is not None:
            await write(chunk)

    producer = asyncio.create_task(produce())
    try:
        await client.request("PUT", "/api/tree", body_producer=body, request_timeout=300)
    finally:
        producer.cancel()
        # Let it end, and give its connection back, before this returns or raises.
        await asyncio.wait([producer])
    if not producer.cancelled() and (error := producer.exception()) is not None:
        raise error
    return count
