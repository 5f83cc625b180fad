"""Saves and upload chunks send their locks, bytes and file row before reading any answer (one
round trip), and check the answers after: a refused write must leave nothing behind, and a save
of the bytes a file holds already must store nothing new."""

from __future__ import annotations

import uuid
from base64 import encodebytes
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from jupyter_server.base.call_context import CallContext

from extensions.workspaces.contents import PostgresContentsManager
from tests.test_contents_contract import mkdir, put_handler, read, save_bytes, save_text, status

pytestmark = pytest.mark.usefixtures("jp_environ")


def stored(database_url: str, workspace_id: uuid.UUID) -> dict[str, Any]:
    """Everything a workspace stores, as rows (dates included: a refused save keeps them)."""
    queries = {
        "items": "SELECT path, type, content_id, sha256, size, last_modified "
        "FROM workspace_items WHERE workspace_id = %s ORDER BY path",
        "parts": "SELECT content_id, seq, octet_length(data) FROM content_parts "
        "WHERE workspace_id = %s ORDER BY 1, 2",
        "uploads": "SELECT path, content_id, writes FROM uploads WHERE workspace_id = %s",
        "bytes_used": "SELECT bytes_used FROM workspaces WHERE id = %s",
        "texts": "SELECT t.content_id FROM search_texts t JOIN workspace_items i "
        "ON i.content_id = t.content_id WHERE i.workspace_id = %s ORDER BY 1",
    }
    with psycopg.connect(database_url) as conn:
        return {
            name: conn.execute(query, [workspace_id]).fetchall() for name, query in queries.items()
        }


@pytest.fixture
def no_if_match() -> Iterator[None]:
    yield
    CallContext.set(CallContext.JUPYTER_HANDLER, None)


async def chunk(pg: PostgresContentsManager, path: str, number: int, data: bytes) -> Any:
    model = {"type": "file", "format": "base64", "chunk": number}
    return await pg.save({**model, "content": encodebytes(data).decode("ascii")}, path)


@pytest.mark.usefixtures("no_if_match")
async def test_a_refused_save_changes_nothing(
    make_pg: Callable[..., PostgresContentsManager], database_url: str, workspace_id: uuid.UUID
) -> None:
    pg = make_pg(workspace_quota=10_000)
    await mkdir(pg, "folder")
    await save_text(pg, "folder/a.txt", "first")
    await save_text(pg, "b.txt", "x" * 4000)
    before = stored(database_url, workspace_id)

    assert await status(save_text(pg, "folder", "over a directory")) == 400
    assert await status(save_text(pg, "nope/a.txt", "no parent")) == 404
    assert await status(save_text(pg, "b.txt/a.txt", "a file as parent")) == 404
    assert await status(save_text(pg, "c.txt", "y" * 8000)) == 413  # over the quota
    CallContext.set(CallContext.JUPYTER_HANDLER, put_handler('"0000"'))
    assert await status(save_text(pg, "folder/a.txt", "stale")) == 409
    assert await status(save_text(pg, "new.txt", "stale")) == 409

    assert stored(database_url, workspace_id) == before
    assert (await pg.get("folder/a.txt"))["content"] == "first"


async def test_saving_the_bytes_a_file_holds_stores_nothing_new(
    pg: PostgresContentsManager, database_url: str, workspace_id: uuid.UUID
) -> None:
    await save_text(pg, "a.txt", "version 1")
    await pg.create_checkpoint("a.txt")  # shares the file's content
    first = stored(database_url, workspace_id)
    again = await save_text(pg, "a.txt", "version 1")
    after = stored(database_url, workspace_id)
    assert after["parts"] == first["parts"]
    assert after["bytes_used"] == first["bytes_used"]
    assert after["texts"] == first["texts"]
    (path, kind, content_id, sha256, size, modified) = after["items"][0]
    assert (path, kind, content_id, sha256, size) == first["items"][0][:5]
    assert modified == again["last_modified"] > first["items"][0][5]

    await save_text(pg, "a.txt", "version 2")  # new bytes: a new content, the old one kept
    changed = stored(database_url, workspace_id)
    assert changed["items"][0][2] != content_id
    assert len(changed["parts"]) == len(first["parts"]) + 1
    assert len(changed["texts"]) == 1  # the search keeps the text of the file's content
    assert await read(pg, "a.txt") == b"version 2"


async def test_a_write_to_a_deleted_workspace_is_404(
    pg: PostgresContentsManager, database_url: str, workspace_id: uuid.UUID
) -> None:
    await save_text(pg, "a.txt", "kept until the workspace goes")
    await chunk(pg, "up.bin", 1, b"first chunk")
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM workspaces WHERE id = %s", [workspace_id])
    for write in (
        save_text(pg, "a.txt", "too late"),
        save_text(pg, "b.txt", "too late"),
        chunk(pg, "up.bin", 2, b"too late"),
        chunk(pg, "other.bin", 1, b"too late"),
        chunk(pg, "up.bin", -1, b"too late"),
    ):
        with pytest.raises(Exception) as info:  # noqa: PT011 (the status is checked)
            await write
        assert getattr(info.value, "status_code", None) == 404, info.value
        assert "No such workspace" in str(info.value)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM content_parts").fetchone()
    assert row == (0,)


async def test_a_refused_chunk_changes_nothing(
    make_pg: Callable[..., PostgresContentsManager], database_url: str, workspace_id: uuid.UUID
) -> None:
    pg = make_pg(workspace_quota=10_000)
    await chunk(pg, "up.bin", 1, b"a" * 3000)
    before = stored(database_url, workspace_id)
    assert await status(chunk(pg, "other.bin", 2, b"no chunk 1 before")) == 400
    assert await status(chunk(pg, "nope/up.bin", 1, b"x")) == 404  # no such directory
    assert stored(database_url, workspace_id) == before

    await mkdir(pg, "folder")
    before = stored(database_url, workspace_id)
    assert await status(chunk(pg, "folder", 1, b"over a directory")) == 400
    assert stored(database_url, workspace_id) == before

    # Over the quota: refused, and the upload (which cannot succeed) is dropped at once.
    assert await status(chunk(pg, "up.bin", 2, b"b" * 8000)) == 413
    after = stored(database_url, workspace_id)
    assert after["uploads"] == []
    assert after["items"] == before["items"]
    assert after["parts"] == []
    assert after["bytes_used"] == [(0,)]


async def test_the_search_keeps_the_text_of_text_files_alone(
    pg: PostgresContentsManager, database_url: str, workspace_id: uuid.UUID
) -> None:
    """Binary files are told apart by a NUL in their first 8 KiB, or else by converting them."""
    await save_bytes(pg, "nul-first.bin", b"\x00" + b"a" * 100)
    await save_bytes(pg, "nul-late.bin", b"a" * 10_000 + b"\x00")
    await save_bytes(pg, "latin1.txt", b"caf\xe9" * 3000)
    await save_text(pg, "accents.txt", "\u00e9" * 5000)  # two-byte characters across 8 KiB
    await save_text(pg, "plain.txt", "needle")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """SELECT i.path FROM workspace_items i JOIN search_texts t
               ON t.content_id = i.content_id WHERE i.workspace_id = %s ORDER BY 1""",
            [workspace_id],
        ).fetchall()
    assert rows == [("accents.txt",), ("plain.txt",)]
