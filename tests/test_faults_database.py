"""Database faults: the embedded PostgreSQL killed mid-traffic, and shutdown while it is frozen."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pgserver.postgres_server import get_server

from tests import postgres
from tests.client import Client
from tests.test_restart import Platform, data_dir  # noqa: F401  (fixture)
from tests.waiting import until

pytestmark = pytest.mark.slow

SHUTDOWN_TIMEOUT = 3


def postmaster(pgdata: Path) -> psutil.Process | None:
    """The running postmaster of ``pgdata``, from its ``postmaster.pid``."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE and process.name() == "postgres":
            return process
    except (FileNotFoundError, IndexError, ValueError, psutil.NoSuchProcess):
        pass
    return None


def terminate(platform: Platform) -> str:
    """SIGTERM the platform, wait for it, and make sure its embedded PostgreSQL is gone."""
    assert platform.process is not None
    if platform.process.poll() is None:
        platform.process.send_signal(signal.SIGTERM)
        try:
            platform.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            platform.kill()
    left = postmaster(platform.data_dir / "pgdata")
    if left is not None:  # the platform failed to stop it: do not leak it into other tests
        left.kill()
    return platform.log.read_text()


async def make_api(platform: Platform) -> tuple[Client, str]:
    """A user's token client and one workspace of theirs."""
    _, api = await platform.sign_up()
    created = await api.post("/api/workspaces", {"name": "faults"})
    assert created.status == 201, created.body
    return api, created.json["uuid"]


async def test_embedded_postgres_killed_mid_traffic_comes_back(data_dir: Path) -> None:  # noqa: F811
    platform = Platform(None, data_dir, "--EmbeddedPostgres.check_interval=0.2")
    await platform.start()
    stop = asyncio.Event()
    try:
        api, ws = await make_api(platform)
        saved: dict[str, bytes] = {}
        refused: list[tuple[int, object]] = []

        async def save_forever() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                name = f"n{n}.bin"
                content = os.urandom(64) + name.encode()
                body = {"type": "file", "format": "base64"}
                body["content"] = base64.b64encode(content).decode()
                response = await api.request("PUT", f"/w/{ws}/api/contents/{name}", body)
                if 200 <= response.status < 300:
                    saved[name] = content
                else:
                    refused.append((response.status, response.json))

        async def saves(count: int) -> bool:
            return len(saved) >= count

        saver = asyncio.create_task(save_forever())
        await until(lambda: saves(10), "ten saves", within=60)
        victim = postmaster(data_dir / "pgdata")
        assert victim is not None
        victim.kill()
        before_kill = len(saved)

        anonymous = Client(platform.url)
        unhealthy: list[object] = []

        async def restarted() -> bool:
            health = await anonymous.get("/api/health")
            if health.status != 200:
                unhealthy.append(health.json)
            return health.status == 200 and health.json.get("database_restarts") == 1

        await until(restarted, "the embedded PostgreSQL restarted", within=60)
        after_restart = len(saved)
        await until(lambda: saves(after_restart + 10), "saves after the restart", within=60)
        stop.set()
        await saver

        assert len(saved) > before_kill
        # What failed in between failed as an outage, never as a crash.
        for status, body in refused:
            assert status == 503, body
            assert isinstance(body, dict)
            assert body["reason"] == "database_unavailable", body
        # Every save that was answered 2xx is there, byte for byte.
        for name, content in saved.items():
            read = await api.get(f"/w/{ws}/files/{name}")
            assert read.status == 200, name
            assert read.body == content, name

        for body in unhealthy:
            assert isinstance(body, dict)
            assert body["status"] == "unavailable", body
            assert body["database"] in {"restarting", "unavailable"}, body
        health = await anonymous.get("/api/health")
        assert health.json == {"status": "ok", "database": "ok", "database_restarts": 1}
        metrics = (await api.get("/metrics")).body.decode()
        assert "platform_database_restarts_total 1.0" in metrics.splitlines()
        assert postmaster(data_dir / "pgdata") is not None
    finally:
        stop.set()
        log = terminate(platform)
    assert "database | embedded PostgreSQL restarted" in log, log[-3000:]
    # It stopped with the platform, as before the crash.
    assert postmaster(data_dir / "pgdata") is None, log[-3000:]


class FreezableDatabase:
    """A PostgreSQL server of this test's own, whose processes can be frozen (SIGSTOP)."""

    def __init__(self, pgdata: Path) -> None:
        self.server = get_server(pgdata, cleanup_mode="delete")
        self.admin_url: str = self.server.get_uri("postgres")

    def processes(self) -> list[psutil.Process]:
        main = psutil.Process(self.server.get_pid())
        return [main, *main.children(recursive=True)]

    def freeze(self) -> None:
        for process in self.processes():
            process.suspend()

    def thaw(self) -> None:
        for process in self.processes():
            process.resume()


@pytest.fixture
def freezable() -> Iterator[FreezableDatabase]:
    # Not under pytest's own temporary folder: each pytest run that starts makes that folder
    # private again, which would lock PostgreSQL's user out of a server starting meanwhile.
    with tempfile.TemporaryDirectory(prefix="platform-frozen-") as folder:
        database = FreezableDatabase(Path(folder) / "pgdata")
        yield database
        database.thaw()
        database.server.cleanup()


async def test_sigterm_exits_in_bounded_time_while_database_is_frozen(
    freezable: FreezableDatabase,
    data_dir: Path,  # noqa: F811
) -> None:
    url = postgres.create_database(freezable.admin_url)
    platform = Platform(url, data_dir, f"--PlatformApp.shutdown_timeout={SHUTDOWN_TIMEOUT}")
    await platform.start()
    try:
        api, ws = await make_api(platform)
        # A running sandbox whose sync the stopping platform hands over through the database.
        terminal = await api.post(f"/w/{ws}/api/terminals")
        assert terminal.status == 200, terminal.body
        assert (await api.get(f"/w/{ws}/api/terminals")).status == 200

        freezable.freeze()
        assert platform.process is not None
        platform.process.send_signal(signal.SIGTERM)
        # The bound is the platform's promise; several times it is ample on a loaded machine.
        try:
            await asyncio.to_thread(platform.process.wait, timeout=10 * SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("the platform did not exit after SIGTERM with its database frozen")
    finally:
        freezable.thaw()
        log = terminate(platform)
    assert platform.process.returncode is not None
    assert "shutdown | abandoned after" in log, log[-3000:]
