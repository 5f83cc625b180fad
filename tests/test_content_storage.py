"""How file content is stored: in parts, shared by copies and checkpoints, never leaked.

Every test ends by checking that no part is left that nothing refers to (the triggers of
migration 0006 delete a content with the last row letting go of it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from base64 import encodebytes
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from extensions.workspaces import contents as contents_module
from extensions.workspaces.contents import PostgresContentsManager
from platform_server.db.migrate import apply_migrations, load_migrations
from tests import postgres
from tests.test_contents_contract import MiB, mkdir, read, save_bytes, status, upload

pytestmark = pytest.mark.usefixtures("jp_environ")
log = logging.getLogger("tests")


def orphan_parts(database_url: str) -> int:
    """Parts of contents that no file, checkpoint or upload refers to."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """SELECT count(*) FROM content_parts p
               WHERE NOT EXISTS (SELECT FROM workspace_items WHERE content_id = p.content_id)
                 AND NOT EXISTS (SELECT FROM checkpoints WHERE content_id = p.content_id)
                 AND NOT EXISTS (SELECT FROM uploads WHERE content_id = p.content_id)"""
        ).fetchone()
    assert row is not None
    return int(row[0])


def part_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM content_parts").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(autouse=True)
def no_orphans_after(database_url: str) -> Iterator[None]:
    yield
    assert orphan_parts(database_url) == 0


async def stored_hash(pg: PostgresContentsManager, path: str) -> str:
    model = await pg.get(path, content=False, require_hash=True)
    return str(model["hash"])


async def test_a_large_file_is_stored_in_parts_and_read_back_exactly(
    pg: PostgresContentsManager, database_url: str
) -> None:
    data = os.urandom(2 * MiB + 17)
    await save_bytes(pg, "big.bin", data)
    assert part_count(database_url) == 3
    assert await read(pg, "big.bin") == data
    assert await stored_hash(pg, "big.bin") == hashlib.sha256(data).hexdigest()

    await save_bytes(pg, "big.bin", b"small now")  # the old parts go with the old content
    assert part_count(database_url) == 1
    await save_bytes(pg, "empty.txt", b"")
    assert await read(pg, "empty.txt") == b""
    assert part_count(database_url) == 1


async def test_copies_and_checkpoints_share_content_and_outlive_the_original(
    pg: PostgresContentsManager, database_url: str
) -> None:
    await save_bytes(pg, "a.bin", b"version 1")
    checkpoint = await pg.create_checkpoint("a.bin")
    await pg.copy("a.bin", "b.bin")
    await mkdir(pg, "d")
    await pg.copy("a.bin", "d")
    await pg.copy("d", "")  # a directory copy: "d-Copy1"
    assert part_count(database_url) == 1  # four files and a checkpoint, one stored content

    await save_bytes(pg, "a.bin", b"version 2")
    await pg.delete("d")
    assert await read(pg, "b.bin") == b"version 1"
    assert await read(pg, "d-Copy1/a.bin") == b"version 1"
    await pg.delete("b.bin")
    await pg.delete("d-Copy1")
    assert part_count(database_url) == 2  # the checkpoint keeps version 1
    await pg.restore_checkpoint(checkpoint["id"], "a.bin")
    assert await read(pg, "a.bin") == b"version 1"
    await pg.delete_checkpoint(checkpoint["id"], "a.bin")
    assert part_count(database_url) == 1


async def test_pruned_checkpoints_release_their_content(
    make_pg: Callable[..., PostgresContentsManager], database_url: str
) -> None:
    pg = make_pg()
    pg.checkpoints.max_checkpoints = 2
    for version in range(5):
        await save_bytes(pg, "a.txt", f"version {version}".encode())
        await pg.create_checkpoint("a.txt")
    assert len(await pg.list_checkpoints("a.txt")) == 2
    assert part_count(database_url) == 2  # the newest checkpoint is the file's own content


async def test_uploads_are_written_once_and_refused_ones_leave_nothing(
    make_pg: Callable[..., PostgresContentsManager], database_url: str
) -> None:
    pg = make_pg(max_file_size=5000)
    data = os.urandom(4000)
    await upload(pg, "up.bin", data, chunk_size=1000)
    assert part_count(database_url) == 4  # the chunks became the file's parts
    assert await read(pg, "up.bin") == data
    assert await stored_hash(pg, "up.bin") == hashlib.sha256(data).hexdigest()

    assert await status(upload(pg, "up.bin", os.urandom(6000), chunk_size=1000)) == 413
    assert await read(pg, "up.bin") == data
    assert part_count(database_url) == 4


async def test_an_upload_started_over_drops_the_abandoned_chunks(
    pg: PostgresContentsManager, database_url: str
) -> None:
    first = {"type": "file", "format": "base64", "chunk": 1}
    await pg.save({**first, "content": encodebytes(b"abandoned").decode()}, "up.bin")
    await pg.save({**first, "chunk": 2, "content": encodebytes(b" chunks").decode()}, "up.bin")
    await upload(pg, "up.bin", b"fresh start", chunk_size=4)
    assert await read(pg, "up.bin") == b"fresh start"
    assert part_count(database_url) == 3


@pytest.mark.parametrize("forget_between_chunks", [False, True])
async def test_a_chunk_sent_again_replaces_itself_and_the_hash_is_of_what_is_stored(
    pg: PostgresContentsManager, forget_between_chunks: bool
) -> None:
    """Also when another replica took some chunks (this process's running digest is then
    incomplete, and the stored parts are hashed instead)."""

    async def chunk(number: int, data: bytes) -> None:
        model = {"type": "file", "format": "base64", "chunk": number}
        await pg.save({**model, "content": encodebytes(data).decode()}, "up.bin")
        if forget_between_chunks:
            contents_module._UPLOAD_DIGESTS = type(contents_module._UPLOAD_DIGESTS)()

    await chunk(1, b"one ")
    await chunk(2, b"TWO ")
    await chunk(2, b"two ")  # resent, with other bytes
    await chunk(-1, b"three")
    assert await read(pg, "up.bin") == b"one two three"
    assert await stored_hash(pg, "up.bin") == hashlib.sha256(b"one two three").hexdigest()


async def test_deleting_a_workspace_deletes_its_content(
    pg: PostgresContentsManager, database_url: str, workspace_id: uuid.UUID
) -> None:
    await save_bytes(pg, "a.bin", os.urandom(MiB + 1))
    await pg.create_checkpoint("a.bin")
    await pg.save({"type": "file", "format": "base64", "chunk": 1, "content": "eA=="}, "u.bin")
    assert part_count(database_url) == 3
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM workspaces WHERE id = %s", [workspace_id])
    assert part_count(database_url) == 0


def schema_before(conn: psycopg.Connection[Any], version: int) -> None:
    """Apply (and record) the migrations older than ``version``, as a database of then had."""
    conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for migration in load_migrations():
        if migration.version < version:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                [migration.version, migration.name],
            )


def test_migration_0006_moves_stored_content_into_parts(pg_admin_url: str) -> None:
    url = postgres.create_database(pg_admin_url)
    try:
        with psycopg.connect(url) as conn:
            schema_before(conn, 6)
            old_rows(conn)
        assert apply_migrations(url, log)[0] == 6
        with psycopg.connect(url) as conn:
            files = conn.execute(
                """SELECT path, type, content_bytes(content_id), size FROM workspace_items
                   ORDER BY path"""
            ).fetchall()
            saved = conn.execute(
                "SELECT path, content_bytes(content_id), size FROM checkpoints"
            ).fetchall()
        assert files == [
            ("d", "directory", None, 0),
            ("d/empty.txt", "file", b"", 0),
            ("main.py", "file", b"print(1)\n", 9),
        ]
        assert saved == [("main.py", b"print(0)\n", 9)]
        assert orphan_parts(url) == 0
    finally:
        postgres.drop_database(pg_admin_url, url)


def old_rows(conn: psycopg.Connection[Any]) -> None:
    """Files, a directory and a checkpoint as the schema before 0006 stored them."""
    conn.execute("INSERT INTO users (username, password_hash) VALUES ('old', '!')")
    row = conn.execute(
        "INSERT INTO workspaces (owner_id, name) SELECT id, 'w' FROM users RETURNING id"
    ).fetchone()
    assert row is not None
    ws = row[0]
    for path, parent, name, kind, content in (
        ("main.py", "", "main.py", "file", b"print(1)\n"),
        ("d", "", "d", "directory", None),
        ("d/empty.txt", "d", "empty.txt", "file", b""),
    ):
        conn.execute(
            """INSERT INTO workspace_items (workspace_id, path, parent, name, type, content,
                                            size, sha256)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            [
                ws,
                path,
                parent,
                name,
                kind,
                content,
                len(content or b""),
                None if content is None else hashlib.sha256(content).digest(),
            ],
        )
    conn.execute(
        """INSERT INTO checkpoints (workspace_id, path, type, content, sha256, last_modified)
           VALUES (%s, 'main.py', 'file', 'print(0)\n', %s, now())""",
        [ws, hashlib.sha256(b"print(0)\n").digest()],
    )


def test_migration_0008_counts_checkpoints_and_shared_contents_once(pg_admin_url: str) -> None:
    url = postgres.create_database(pg_admin_url)
    try:
        with psycopg.connect(url) as conn:
            schema_before(conn, 8)
            ws = rows_before_0008(conn)
        assert apply_migrations(url, log)[0] == 8
        with psycopg.connect(url) as conn:
            # main.py (9) and its copy share a content; the checkpoint keeps 'print(0)\n' (9);
            # the upload in progress has 4 bytes: 22, where file sizes summed to 18.
            row = conn.execute("SELECT bytes_used FROM workspaces WHERE id = %s", [ws]).fetchone()
            assert row == (22,)
            conn.execute("DELETE FROM checkpoints")
            row = conn.execute("SELECT bytes_used FROM workspaces WHERE id = %s", [ws]).fetchone()
            assert row == (13,)
        assert orphan_parts(url) == 0
    finally:
        postgres.drop_database(pg_admin_url, url)


def rows_before_0008(conn: psycopg.Connection[Any]) -> Any:
    """A file, its copy, a checkpoint and an upload as the schema before 0008 stored them."""
    conn.execute("INSERT INTO users (username, password_hash) VALUES ('old', '!')")
    row = conn.execute(
        "INSERT INTO workspaces (owner_id, name, bytes_used) SELECT id, 'w', 18 FROM users "
        "RETURNING id"
    ).fetchone()
    assert row is not None
    ws = row[0]
    for content_id, data in ((1, b"print(1)\n"), (2, b"print(0)\n"), (3, b"up")):
        conn.execute(
            "INSERT INTO content_parts (content_id, seq, data) VALUES (%s, 1, %s)",
            [content_id, data],
        )
    conn.execute("INSERT INTO content_parts (content_id, seq, data) VALUES (3, 2, 'ld')")
    digest = hashlib.sha256(b"print(1)\n").digest()
    for path in ("main.py", "copy.py"):
        conn.execute(
            """INSERT INTO workspace_items (workspace_id, path, parent, name, type, content_id,
                                            size, sha256)
               VALUES (%s, %s, '', %s, 'file', 1, 9, %s)""",
            [ws, path, path, digest],
        )
    conn.execute(
        """INSERT INTO checkpoints (workspace_id, path, type, content_id, size, sha256,
                                    last_modified)
           VALUES (%s, 'main.py', 'file', 2, 9, %s, now())""",
        [ws, hashlib.sha256(b"print(0)\n").digest()],
    )
    conn.execute(
        "INSERT INTO uploads (workspace_id, path, content_id) VALUES (%s, 'big.bin', 3)", [ws]
    )
    return ws
