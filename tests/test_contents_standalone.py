"""Standalone mode: a stock ``jupyter server`` serves one workspace (PostgresContentsManager)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from base64 import encodebytes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from extensions.workspaces.contents import PostgresContentsManager
from extensions.workspaces.standalone import resolve_workspace
from platform_server.errors import NotFound
from tests.client import Client
from tests.waiting import until
from tests.workspace_fixtures import manager_config

MANAGER = "extensions.workspaces.contents.PostgresContentsManager"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class StockServer:
    """``jupyter server`` in a child process, configured only on its command line."""

    def __init__(self, database_url: str, workspace: str, home: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base_url = f"http://127.0.0.1:{self.port}"
        for folder in ("config", "data", "runtime", "root"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "DATABASE"))}
        env.update(
            HOME=str(home),
            JUPYTER_CONFIG_DIR=str(home / "config"),
            JUPYTER_DATA_DIR=str(home / "data"),
            JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                f"--ServerApp.contents_manager_class={MANAGER}",
                f"--PostgresContentsManager.db_url={database_url}",
                f"--PostgresContentsManager.workspace={workspace}",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                "--ServerApp.ip=127.0.0.1",
                "--ServerApp.open_browser=False",
                "--ServerApp.allow_root=True",  # CI containers run as root
                f"--ServerApp.root_dir={home / 'root'}",
                # Nothing but the contents API is under test: no terminals on this machine.
                "--ServerApp.jpserver_extensions=jupyter_server_terminals=False",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.client = Client(self.base_url, token=self.token)

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            if self.process.poll() is not None:
                output = self.process.stdout.read() if self.process.stdout else ""
                msg = f"jupyter server exited:\n{output}"
                raise AssertionError(msg)
            try:
                return (await self.client.get("/api/status")).status == 200
            except OSError:
                return False

        await until(ready, "jupyter server answers", interval=0.1)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return output or ""


@pytest.fixture
def stock_server(database_url: str, tmp_path: Path) -> Iterator[StockServer]:
    server = StockServer(database_url, "notes", tmp_path)
    yield server
    server.stop()


def contents(path: str) -> str:
    return f"/api/contents/{path}"


async def test_a_stock_jupyter_server_serves_a_workspace(
    stock_server: StockServer, database_url: str
) -> None:
    await stock_server.wait_ready()
    api = stock_server.client

    saved = await api.request(
        "PUT", contents("hello.txt"), {"type": "file", "format": "text", "content": "hi"}
    )
    assert saved.status == 201, saved.body
    assert saved.json["path"] == "hello.txt"
    assert saved.headers["Location"] == "/api/contents/hello.txt"
    got = await api.get(contents("hello.txt") + "?hash=1")
    assert got.status == 200
    assert (got.json["content"], got.json["format"]) == ("hi", "text")
    listing = await api.get(contents(""))
    assert [child["name"] for child in listing.json["content"]] == ["hello.txt"]

    # If-Match over HTTP: a stale tag is refused with 409; the current one saves.
    body = {"type": "file", "format": "text", "content": "changed"}
    stale = await api.request("PUT", contents("hello.txt"), body, headers={"If-Match": '"00"'})
    assert stale.status == 409, stale.body
    assert "changed by someone else" in stale.json["message"]
    fresh = {"If-Match": f'"{got.json["hash"]}"'}
    assert (await api.request("PUT", contents("hello.txt"), body, headers=fresh)).status == 200

    # A chunked upload, as JupyterLab sends files over 15 MB.
    data = os.urandom(3000)
    for chunk, start in ((1, 0), (2, 1000), (-1, 2000)):
        piece: dict[str, Any] = {
            "type": "file",
            "format": "base64",
            "chunk": chunk,
            "content": encodebytes(data[start : start + 1000]).decode(),
        }
        assert (await api.request("PUT", contents("up.bin"), piece)).status in {200, 201}
    uploaded = await api.get(contents("up.bin") + "?content=0")
    assert uploaded.json["size"] == 3000

    # Everything is in PostgreSQL, in the workspace "notes" of the user "standalone".
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """SELECT u.username, u.password_hash, w.name, i.path, content_bytes(i.content_id)
               FROM workspace_items i JOIN workspaces w ON w.id = i.workspace_id
               JOIN users u ON u.id = w.owner_id ORDER BY i.path"""
        ).fetchall()
    assert rows == [
        ("standalone", "!", "notes", "hello.txt", b"changed"),
        ("standalone", "!", "notes", "up.bin", data),
    ]
    output = stock_server.stop()
    assert stock_server.token not in output.replace(f"token={stock_server.token}", "")


def test_standalone_workspace_resolution(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        first = resolve_workspace(conn, "notes")
        assert resolve_workspace(conn, "notes") == first
        assert resolve_workspace(conn, str(first)) == first
        other = resolve_workspace(conn, "other")
        assert other != first
        with pytest.raises(NotFound):
            resolve_workspace(conn, "00000000-0000-0000-0000-000000000000")
        owners = conn.execute("SELECT count(*) FROM users WHERE username = 'standalone'")
        assert owners.fetchone() == (1,)


async def test_standalone_refuses_to_start_without_a_workspace(
    database_url: str, tmp_path: Path
) -> None:
    server = StockServer(database_url, "", tmp_path)
    output = await asyncio.to_thread(server.process.wait, 30)
    assert output != 0
    log = server.stop()
    assert "PostgresContentsManager.workspace is required" in log, json.dumps(log[-2000:])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_servers_started_and_stopped_in_one_process_keep_connecting(database_url: str) -> None:
    """A process that runs many stock servers one after another, each on its own event loop
    (as a test suite does), never exhausts PostgreSQL's connections (100 by default)."""

    async def serve_once() -> PostgresContentsManager:
        manager = PostgresContentsManager(
            db_url=database_url, workspace="notes", config=manager_config()
        )
        listing = await manager.get("")
        assert [child["name"] for child in listing["content"]] == ["docs"]
        return manager

    def connections() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(database_url) as conn:
        workspace_id = resolve_workspace(conn, "notes")
        conn.execute(
            "INSERT INTO workspace_items (workspace_id, path, parent, name, type) "
            "VALUES (%s, 'docs', '', 'docs', 'directory')",
            [workspace_id],
        )
    stopped = []  # what made the servers may keep them: their pools must not matter
    for _ in range(150):
        loop = asyncio.new_event_loop()
        try:
            stopped.append(loop.run_until_complete(serve_once()))
        finally:
            loop.close()
    gc.collect()  # connections that were being opened as a loop closed are left to the GC
    loop = asyncio.new_event_loop()
    try:
        # Servers on one loop share its pool; the stopped servers' pools hold nothing.
        running = [loop.run_until_complete(serve_once()) for _ in range(20)]
        assert len(stopped) + len(running) == 170
        assert connections() <= 1 + running[0].db.max_size
        loop.run_until_complete(running[0].db.close())
    finally:
        loop.close()
    # The servers' pools on closed loops are collected here, under this test's warning filter,
    # not in whichever test happens to run the garbage collector next.
    del stopped, running
    gc.collect()
