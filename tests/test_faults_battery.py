"""Faults in the middle of work, each seen as a user sees it and checked for what was saved:
PostgreSQL killed mid-save and mid-upload, the agent killed while files reach its sandbox, the
platform killed while it starts a sandbox, and one of two replicas frozen."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgserver.utils import PostmasterInfo
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from extensions.sandboxes.spawners.local import LocalSpawner
from extensions.sandboxes.spawners.local_state import STATE_NAME
from platform_server.app import PlatformApp
from platform_server.db.embedded import DATABASE_NAME
from tests.client import Client, Response
from tests.test_content_storage import orphan_parts
from tests.test_faults_database import make_api, postmaster, terminate
from tests.test_restart import Platform, data_dir, read_until  # noqa: F401  (fixture)
from tests.test_sync import until_get
from tests.test_terminals import (  # noqa: F401  (fixture)
    Terminal,
    close_terminals,
    open_terminal,
    workspace_with_token,
)
from tests.waiting import until

pytestmark = pytest.mark.slow


def file_model(content: bytes, **extra: Any) -> dict[str, Any]:
    encoded = base64.b64encode(content).decode()
    return {"type": "file", "format": "base64", "content": encoded, **extra}


def embedded_url(folder: Path) -> str:
    """A connection string of the platform's embedded PostgreSQL, as it runs now."""
    info = PostmasterInfo.read_from_pgdata(folder / "pgdata")
    assert info is not None
    uri: str = info.get_uri(database=DATABASE_NAME)
    return uri


async def attempt(api: Client, method: str, path: str, body: Any) -> Response | None:
    """A request; None when the connection itself failed (the server gave no answer)."""
    try:
        return await api.request(method, path, body)
    except (OSError, HTTPClientError):
        return None


def assert_outage(response: Response | None) -> None:
    """A request that failed during a database outage failed as one: a JSON 503, or no answer."""
    if response is None:
        return
    assert response.status == 503, (response.status, response.body[:300])
    assert response.json["reason"] == "database_unavailable", response.json


async def kill_embedded_postgres(platform: Platform, anonymous: Client, restarts: int) -> None:
    """kill -9 the embedded postmaster; wait until the platform has it running again."""
    victim = postmaster(platform.data_dir / "pgdata")
    assert victim is not None
    victim.kill()

    async def back() -> bool:
        health = await attempt(anonymous, "GET", "/api/health", None)
        return (
            health is not None
            and health.status == 200
            and health.json.get("database_restarts") == restarts
        )

    await until(back, "the embedded PostgreSQL is back", within=90, interval=0.2)


async def test_postgres_killed_mid_save_loses_no_answered_save_and_tears_no_file(
    data_dir: Path,  # noqa: F811
) -> None:
    platform = Platform(None, data_dir, "--EmbeddedPostgres.check_interval=0.2")
    await platform.start()
    stop = asyncio.Event()
    try:
        api, ws = await make_api(platform)
        # Every content ever sent, per file; and per writer, its saves in order with outcomes.
        sent: dict[str, set[bytes]] = {}
        outcomes: list[tuple[str, bytes, Response | None]] = []
        answered = 0

        async def writer(name: str) -> None:
            nonlocal answered
            n = 0
            while not stop.is_set():
                n += 1
                # Large enough to span several stored parts: a torn write would show.
                content = os.urandom(300_000) + f"{name}:{n}:{uuid.uuid4()}".encode()
                sent.setdefault(name, set()).add(content)
                response = await attempt(
                    api, "PUT", f"/w/{ws}/api/contents/{name}", file_model(content)
                )
                outcomes.append((name, content, response))
                if response is not None and 200 <= response.status < 300:
                    answered += 1

        # Three writers share one file; five more write one file each, one save after another.
        names = ["shared.bin"] * 3 + [f"own{i}.bin" for i in range(5)]
        writers = [asyncio.create_task(writer(name)) for name in names]
        await until(lambda: answered >= 20, "twenty saves", within=60)
        await kill_embedded_postgres(platform, Client(platform.url), restarts=1)
        after = answered
        await until(lambda: answered >= after + 20, "saves after the restart", within=60)
        stop.set()
        await asyncio.gather(*writers)

        for _, _, response in outcomes:
            if response is None or not 200 <= response.status < 300:
                assert_outage(response)
        assert any(r is None or r.status == 503 for _, _, r in outcomes), "no save met the fault"

        for name, contents in sent.items():
            read = await api.get(f"/w/{ws}/files/{name}")
            assert read.status == 200, name
            # Exactly one of the contents sent: never torn, never mixed.
            assert read.body in contents, name
            if name == "shared.bin":
                continue
            # One writer, one save at a time: the last save answered 2xx is what reads back,
            # unless a later one was cut off by the fault after it committed.
            history = [(c, r) for n, c, r in outcomes if n == name]
            last_ok = max(i for i, (_, r) in enumerate(history) if r and r.status // 100 == 2)
            later = {c for c, r in history[last_ok + 1 :] if r is None or r.status == 503}
            assert read.body == history[last_ok][0] or read.body in later, name
        assert orphan_parts(embedded_url(data_dir)) == 0
    finally:
        stop.set()
        terminate(platform)


async def test_postgres_killed_mid_chunked_upload_resumes_byte_exact_and_leaves_no_parts(
    data_dir: Path,  # noqa: F811
) -> None:
    platform = Platform(None, data_dir, "--EmbeddedPostgres.check_interval=0.2")
    await platform.start()
    try:
        api, ws = await make_api(platform)
        chunks = [os.urandom(256 * 1024) + bytes([i]) for i in range(6)]
        path = f"/w/{ws}/api/contents/upload.bin"

        async def send(index: int) -> Response | None:
            number = -1 if index == len(chunks) - 1 else index + 1
            return await attempt(api, "PUT", path, file_model(chunks[index], chunk=number))

        for index in range(3):
            sent = await send(index)
            assert sent is not None
            assert sent.status in {200, 201}, sent.body
        anonymous = Client(platform.url)
        victim = postmaster(data_dir / "pgdata")
        assert victim is not None
        victim.kill()
        # While it is down, the next chunk is refused as an outage, never a crash.
        assert_outage(await send(3))

        async def back() -> bool:
            health = await attempt(anonymous, "GET", "/api/health", None)
            return health is not None and health.status == 200

        await until(back, "the embedded PostgreSQL is back", within=90, interval=0.2)
        finished: Response | None = None
        for index in range(3, len(chunks)):
            finished = await send(index)
            assert finished is not None
            if finished.status // 100 == 4:  # refused: it says to start again
                assert "send chunk 1 first" in finished.json["message"], finished.json
                break
            assert finished.status in {200, 201}, (finished.status, finished.body[:300])
        assert finished is not None
        if finished.status // 100 == 2:
            read = await api.get(f"/w/{ws}/files/upload.bin")
            assert read.status == 200
            assert read.body == b"".join(chunks)
        else:  # Starting again works.
            for index in range(len(chunks)):
                again = await send(index)
                assert again is not None
                assert again.status in {200, 201}, again.body
            assert (await api.get(f"/w/{ws}/files/upload.bin")).body == b"".join(chunks)
        url = embedded_url(data_dir)
        assert orphan_parts(url) == 0
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM uploads").fetchone() == (0,)
    finally:
        terminate(platform)


# --- the agent killed while files reach its sandbox -------------------------------------------


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"Sandboxes": {"health_interval": 0.3, "health_misses": 2}}


def agent_pid(spawner: LocalSpawner, sandbox_id: str) -> int | None:
    """The agent's pid as the local spawner's ``state.json`` has it, once it is written."""
    try:
        state = json.loads((spawner.sandbox_dir(sandbox_id) / STATE_NAME).read_text())
        return int(state["agent_pid"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


@pytest.mark.parametrize("moment", ["mirroring a save", "loading the workspace"])
async def test_agent_killed_while_files_reach_the_sandbox_loses_no_saved_file(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp, moment: str
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    spawner = jp_serverapp.web_app.settings["sandboxes"].spawner
    assert isinstance(spawner, LocalSpawner)
    big = os.urandom(12 * 1024 * 1024 + 3)
    files = {f"f{i}.bin": os.urandom(50_000) for i in range(40)}

    if moment == "mirroring a save":
        _, terminal = await open_terminal(base_url, ws, token)
        await terminal.run("echo ready", "READY")
        (handle,) = await spawner.find_running()
        pid = agent_pid(spawner, handle.sandbox_id)
        assert pid is not None
        saved = await api.request("PUT", f"/w/{ws}/api/contents/big.bin", file_model(big))
        # Committed and answered; its copy into the sandbox follows, and meets the kill.
        assert saved.status == 201, saved.body
        killed = pid
        os.kill(killed, signal.SIGKILL)
    else:
        for name, content in files.items():
            assert (
                await api.request("PUT", f"/w/{ws}/api/contents/{name}", file_model(content))
            ).status == 201
        assert (
            await api.request("PUT", f"/w/{ws}/api/contents/big.bin", file_model(big))
        ).status == 201
        start = asyncio.create_task(api.post(f"/api/workspaces/{ws}/sandbox"))

        async def loading() -> int | None:
            model = (await api.get(f"/api/workspaces/{ws}/sandbox")).json
            if model["state"] != "starting" or model["progress"] != 80:  # "Loading your files"
                return None
            for handle in await spawner.find_running():
                return agent_pid(spawner, handle.sandbox_id)
            return None

        killed = await until(loading, "the files are loading", within=30, interval=0.01)
        os.kill(killed, signal.SIGKILL)
        answer = await start
        assert answer.status != 500, answer.body
        if answer.status // 100 != 2:
            assert "message" in answer.json, answer.body

    failed = await until_get(
        api, f"/api/workspaces/{ws}/sandbox", lambda r: r.json["state"] == "failed", within=30
    )
    assert failed.json["reason"], failed.json
    assert "files are safe" in failed.json["reason"], failed.json
    read = await api.get(f"/w/{ws}/files/big.bin")
    assert read.status == 200
    assert read.body == big

    _, terminal = await open_terminal(base_url, ws, token)
    (fresh,) = await spawner.find_running()  # a new sandbox, not the killed agent's
    assert agent_pid(spawner, fresh.sandbox_id) not in {None, killed}
    listing = await terminal.run("sha256sum big.bin", "SUMS")
    assert hashlib.sha256(big).hexdigest() in listing
    if moment == "loading the workspace":
        sums = await terminal.run("cat f*.bin | sha256sum", "ALL")
        everything = b"".join(files[name] for name in sorted(files))
        assert hashlib.sha256(everything).hexdigest() in sums
    assert (await api.get(f"/api/workspaces/{ws}/sandbox")).json["state"] == "running"


# --- the platform killed while it starts a sandbox --------------------------------------------


def sandbox_rows(database_url: str, ws: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, state FROM sandboxes WHERE workspace_id = %s", [ws]
        ).fetchall()
    return [(str(row[0]), str(row[1])) for row in rows]


async def test_platform_killed_mid_start_leaves_no_orphan_and_no_stuck_start(
    database_url: str,
    data_dir: Path,  # noqa: F811
) -> None:
    platform = Platform(database_url, data_dir)
    await platform.start()
    try:
        _, api = await platform.sign_up()
        token = api.token
        ws = (await api.post("/api/workspaces", {"name": "many"})).json["uuid"]
        files = {f"f{i:03}.txt": f"file {i}\n".encode() * 2000 for i in range(200)}
        semaphore = asyncio.Semaphore(8)

        async def put(name: str, content: bytes) -> None:
            async with semaphore:
                model = file_model(content)
                assert (
                    await api.request("PUT", f"/w/{ws}/api/contents/{name}", model)
                ).status == 201

        await asyncio.gather(*(put(name, content) for name, content in files.items()))
        start = asyncio.create_task(attempt(api, "POST", f"/api/workspaces/{ws}/sandbox", None))
        await until(
            lambda: any(state == "starting" for _, state in sandbox_rows(database_url, ws)),
            "the sandbox is starting",
            within=30,
            interval=0.01,
        )
        platform.kill()
        await start  # cut off: no answer, or an answer that made it out before the kill

        await platform.start()
        spawner = LocalSpawner(data_dir=str(data_dir))

        async def settled() -> bool:
            rows = sandbox_rows(database_url, ws)
            running = [h.sandbox_id for h in await spawner.find_running()]
            accounted = {sid for sid, state in rows if state in {"running", "starting"}}
            return all(state != "starting" for _, state in rows) and set(running) <= accounted

        await until(settled, "no orphan sandbox and no start left hanging", within=60)

        created = await api.post(f"/w/{ws}/api/terminals")
        assert created.status == 200, created.body
        socket_url = platform.url.replace("http", "ws", 1)
        terminal = await websocket_connect(
            f"{socket_url}/w/{ws}/terminals/websocket/{created.json['name']}?token={token}"
        )
        everything = b"".join(files[name] for name in sorted(files))
        await terminal.write_message(json.dumps(["stdin", "cat f*.txt | sha256sum\r"]))
        await read_until(terminal, hashlib.sha256(everything).hexdigest(), within=30)
        terminal.close()
        rows = sandbox_rows(database_url, ws)
        running = [h.sandbox_id for h in await spawner.find_running()]
        assert [sid for sid, state in rows if state == "running"] == running
    finally:
        if platform.process is not None and platform.process.poll() is None:
            platform.kill()


# --- one of two replicas frozen ---------------------------------------------------------------


@pytest.fixture
def frozen() -> Iterator[list[int]]:
    """Pids a test froze (SIGSTOP); resumed whatever happens, so they can be stopped."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def test_a_frozen_replica_leaves_the_other_serving_everything(
    database_url: str,
    data_dir: Path,  # noqa: F811
    frozen: list[int],
) -> None:
    a, b = Platform(database_url, data_dir), Platform(database_url, data_dir)
    await asyncio.gather(a.start(), b.start())
    try:
        _, on_a = await a.sign_up()
        token = on_a.token
        ws = (await on_a.post("/api/workspaces", {"name": "frozen"})).json["uuid"]
        assert (await on_a.post(f"/w/{ws}/api/terminals")).json["name"] == "1"
        socket_a = a.url.replace("http", "ws", 1) + f"/w/{ws}/terminals/websocket/1?token={token}"
        terminal = await websocket_connect(socket_a)
        await terminal.write_message(json.dumps(["stdin", "echo on-a > a.txt; cat a.txt\r"]))
        await read_until(terminal, "on-a")
        terminal.close()
        await until_get(on_a, f"/w/{ws}/api/contents/a.txt", lambda r: r.status == 200)

        assert a.process is not None
        os.kill(a.process.pid, signal.SIGSTOP)
        frozen.append(a.process.pid)

        # B serves everything: a new login, listings, saves, the terminal, kernels.
        browser = Client(b.url)
        user = {"username": "alice", "password": "correct horse"}
        assert (await browser.post("/api/accounts/login", user)).status == 200
        listed = await browser.get("/api/workspaces")
        assert listed.status == 200
        assert ws in [w["uuid"] for w in listed.json]
        on_b = Client(b.url, token=token)
        saved = await on_b.request(
            "PUT", f"/w/{ws}/api/contents/b.txt", {"type": "file", "format": "text", "content": "b"}
        )
        assert saved.status == 201, saved.body
        assert (await on_b.get(f"/w/{ws}/api/kernels")).status == 200
        created = await on_b.post(f"/w/{ws}/api/terminals")
        assert created.status == 200, created.body
        socket_b = b.url.replace("http", "ws", 1)
        terminal = await websocket_connect(
            f"{socket_b}/w/{ws}/terminals/websocket/{created.json['name']}?token={token}"
        )
        await terminal.write_message(json.dumps(["stdin", "cat b.txt; echo; echo on-b > c.txt\r"]))
        await read_until(terminal, "b")

        # The frozen replica's sync lease (2 s here) runs out; B brings the file in.
        async def synced() -> bool:
            response = await on_b.get(f"/w/{ws}/api/contents/c.txt")
            return response.status == 200 and response.json["content"] == "on-b\n"

        await until(synced, "B took the sync over from the frozen A", within=30)
        terminal.close()

        os.kill(a.process.pid, signal.SIGCONT)
        frozen.remove(a.process.pid)
        for replica in (on_a, on_b):
            read = await replica.get(f"/w/{ws}/api/contents/c.txt")
            assert read.status == 200, replica.base_url
            assert read.json["content"] == "on-b\n", replica.base_url
            assert (await replica.get(f"/w/{ws}/api/kernels")).status == 200
        assert (await on_a.get("/api/workspaces")).status == 200
        again = await on_a.request(
            "PUT", f"/w/{ws}/api/contents/a.txt", {"type": "file", "format": "text", "content": "a"}
        )
        assert again.status == 200, again.body
        assert len(await LocalSpawner(data_dir=str(data_dir)).find_running()) == 1
    finally:
        for replica in (a, b):
            if replica.process is not None and replica.process.poll() is None:
                replica.kill()
