"""Sandboxes outlive the platform: kill -9 the platform, start it again, nothing is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from extensions.sandboxes.spawners.local import LocalSpawner
from tests.client import Client
from tests.test_command import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow


class Platform:
    """The platform as a separate process, so it can be killed for real."""

    def __init__(self, database_url: str | None, data_dir: Path, *args: str) -> None:
        # No database_url: the platform runs its embedded PostgreSQL, as `make run` does.
        self.database_url = database_url
        self.data_dir = data_dir
        self.args = args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "platform.log"

    def defaults(self) -> list[str]:
        """Options of every test platform, unless its ``args`` set them."""
        defaults = {"--Spawner.warm_pool_size": "0"}
        given = {arg.split("=", 1)[0] for arg in self.args}
        return [f"{name}={value}" for name, value in defaults.items() if name not in given]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220  (spawns; never waits)
                [
                    sys.executable,
                    "-m",
                    "platform_server",
                    f"--port={self.port}",
                    "--ip=127.0.0.1",
                    *([f"--PlatformApp.db_url={self.database_url}"] if self.database_url else []),
                    f"--PlatformApp.data_dir={self.data_dir}",
                    "--Accounts.bcrypt_cost=4",
                    "--Sandboxes.sync_lease=2",
                    *self.defaults(),
                    *self.args,
                ],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        client = AsyncHTTPClient()
        process = self.process

        async def healthy() -> bool:
            assert process.poll() is None, self.log.read_text()
            try:
                response = await client.fetch(self.url + "/api/health", raise_error=False)
            except OSError:
                return False
            return response.code == 200

        await until(healthy, f"the platform answers; its log: {self.log}", interval=0.1)

    async def sign_up(self) -> tuple[Client, Client]:
        """Register and log in alice: her browser (a cookie) and a client with an API token."""
        browser = Client(self.url)
        user = {"username": "alice", "password": "correct horse"}
        assert (await browser.post("/api/accounts/register", user)).status == 201
        assert (await browser.post("/api/accounts/login", user)).status == 200
        token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
        return browser, Client(self.url, token=token)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "data"
    yield folder
    spawner = LocalSpawner(data_dir=str(folder))

    async def stop_all() -> None:
        for handle in await spawner.find_running():
            await spawner.stop(handle)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(stop_all())
    loop.close()


async def read_until(connection: Any, needle: str, within: float = 20) -> str:
    seen = ""
    deadline = time.monotonic() + within
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, seen[-300:]
        raw = await asyncio.wait_for(connection.read_message(), remaining)
        assert raw is not None, seen[-300:]
        frame = json.loads(raw)
        if frame[0] == "stdout":
            seen += frame[1]
    return seen


async def test_kill_9_and_restart_reattaches_terminals_and_reaps_orphans(
    database_url: str, data_dir: Path
) -> None:
    platform = Platform(database_url, data_dir)
    await platform.start()
    _, api = await platform.sign_up()
    token = api.token
    ws = (await api.post("/api/workspaces", {"name": "kept"})).json["uuid"]
    doomed = (await api.post("/api/workspaces", {"name": "doomed"})).json["uuid"]
    assert (await api.post(f"/w/{ws}/api/terminals")).json["name"] == "1"
    assert (await api.post(f"/w/{doomed}/api/terminals")).status == 200

    socket_url = platform.url.replace("http", "ws", 1) + f"/w/{ws}/terminals/websocket/1"
    terminal = await websocket_connect(f"{socket_url}?token={token}")
    await terminal.write_message(json.dumps(["stdin", "echo before-$((20+1))\r"]))
    await read_until(terminal, "before-21")
    terminal.close()

    spawner = LocalSpawner(data_dir=str(data_dir))
    assert len(await spawner.find_running()) == 2
    platform.kill()
    # While the platform is down: its sandboxes run on; one workspace disappears.
    assert len(await spawner.find_running()) == 2
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM workspaces WHERE id = %s", [doomed])

    await platform.start()
    terminal = await websocket_connect(f"{socket_url}?token={token}")
    replay = await read_until(terminal, "before-21")
    assert "before-21" in replay
    await terminal.write_message(json.dumps(["stdin", "echo after-$((20+2)) > after.txt\r"]))
    await terminal.write_message(json.dumps(["stdin", "cat after.txt\r"]))
    await read_until(terminal, "after-22")
    terminal.close()

    # The start-up reconcile reaps the orphan; the server may answer before it is done.
    async def reaped() -> list[Any] | None:
        running = await spawner.find_running()
        return running if len(running) <= 1 else None

    (survivor,) = await until(reaped, "the orphan is reaped", within=20)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT id, state FROM sandboxes WHERE workspace_id = %s", [ws]
        ).fetchone()
    assert row is not None
    assert (str(row[0]), row[1]) == (survivor.sandbox_id, "running")

    # The restarted platform took over file sync from the dead one.
    async def synced() -> bool:
        return (await api.get(f"/w/{ws}/api/contents/after.txt")).status == 200

    await until(synced, "sync resumes after the restart", within=20, interval=0.2)
    platform.kill()
