"""Chunked uploads as the contents API receives them (JupyterLab sends chunks 1, 2, ..., then -1
for the last): a chunk's number and model checked, and the chunk stored in one transaction
(``uploads`` holds their SQL)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from extensions.workspaces import items, models, notebooks, uploads
from extensions.workspaces.api_edge import http_transaction
from platform_server.db import Connection, Database
from platform_server.errors import PlatformError, TooLarge

# The largest chunk number of an upload (chunk numbers are PostgreSQL integers).
MAX_CHUNK = 2**31 - 1


def check_number(chunk: Any) -> None:
    """400 unless ``chunk`` is 1, 2, ... or -1 (the last)."""
    if not notebooks.is_int(chunk) or chunk == 0 or chunk < -1 or chunk > MAX_CHUNK:
        msg = f"Invalid chunk number {chunk!r}: 1, 2, ... then -1 for the last."
        raise PlatformError(400, msg, reason="invalid_chunk")


def chunk_bytes(model: dict[str, Any], path: str) -> bytes:
    """The bytes of a chunk's model (only files are uploaded in chunks)."""
    if "type" not in model:
        raise PlatformError(400, "No file type provided")
    if model["type"] != "file":
        msg = f'File type "{model["type"]}" is not supported for large file transfer'
        raise PlatformError(400, msg)
    if "content" not in model:
        raise PlatformError(400, "No file content provided")
    return models.decode(model["content"], model.get("format"), path)


async def store_chunk(
    db: Database | None,
    workspace_id: uuid.UUID,
    path: str,
    chunk: int,
    data: bytes,
    *,
    max_size: int,
    quota: int,
    if_match: Sequence[str] | None,
    expiry: int,
    digests: uploads.UploadDigests,
    publish: Callable[[Connection, items.ItemRow], Awaitable[None]],
) -> tuple[items.ItemRow | None, int]:
    """Store one chunk; ``(the file written, its size)`` for the last, else ``(None, bytes
    received so far)``. ``publish`` tells editors of the file, in the last chunk's transaction.

    An upload refused as too large cannot succeed: its chunks are freed at once.
    """
    limits = {"max_size": max_size, "quota": quota}
    try:
        async with http_transaction(db, pipeline=True) as conn:
            if chunk == -1:
                row = await uploads.finish_upload(
                    conn,
                    workspace_id,
                    path,
                    data,
                    **limits,
                    if_match=if_match,
                    digests=digests,
                )
                await publish(conn, row)
            else:
                content_id, writes, received = await uploads.append_chunk(
                    conn,
                    workspace_id,
                    path,
                    chunk,
                    data,
                    **limits,
                    if_match=if_match,
                    expiry=expiry,
                )
    except PlatformError as e:
        if e.status_code == TooLarge.status_code:
            # The upload cannot succeed: free its chunks now, not when they expire.
            async with http_transaction(db) as conn:
                await uploads.discard_upload(conn, workspace_id, path)
        raise
    if chunk == -1:
        return row, row["size"]
    digests.chunk_stored(content_id, chunk, writes, data)
    return None, received
