"""Sandboxes and terminals end to end: real bubblewrap sandboxes, real agents, real PTYs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from extensions.sandboxes.manager import Sandboxes
from platform_server.app import PlatformApp
from tests.client import Client
from tests.waiting import until

TokenClientFactory = Callable[..., Awaitable[Client]]


OPENED: list[WebSocketClientConnection] = []


@pytest.fixture(autouse=True)
def close_terminals() -> Iterator[None]:
    """Close every terminal WebSocket a test opened."""
    yield
    while OPENED:
        OPENED.pop().close()


class Terminal:
    """A terminado WebSocket client that collects everything the terminal printed."""

    def __init__(self, connection: WebSocketClientConnection) -> None:
        self.connection = connection
        self.output = ""
        OPENED.append(connection)

    @classmethod
    async def open(cls, base_url: str, path: str, token: str) -> Terminal:
        url = base_url.replace("http", "ws", 1) + path + f"?token={token}"
        return cls(await websocket_connect(url))

    async def send(self, text: str) -> None:
        await self.connection.write_message(json.dumps(["stdin", text]))

    async def expect(self, needle: str, within: float = 20) -> str:
        """Read until ``needle`` has been printed; return everything read so far."""
        deadline = time.monotonic() + within
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"never saw {needle!r}; got {self.output[-500:]!r}"
            message = await asyncio.wait_for(self.connection.read_message(), remaining)
            assert message is not None, f"closed before {needle!r}; got {self.output[-500:]!r}"
            frame = json.loads(message)
            if frame[0] == "stdout":
                self.output += frame[1]
        return self.output

    async def run(self, command: str, marker: str) -> str:
        """Run a shell command whose output ends with ``marker``; return what it printed."""
        start = len(self.output)
        await self.send(f"{command}\recho {marker[:3]}''{marker[3:]}\r")
        await self.expect(marker)
        return self.output[start:]

    async def run_until(self, command: str, needle: str, within: float = 20) -> str:
        """Run ``command`` again until what it prints contains ``needle`` (a save reaches the
        sandbox after it answers); return that output."""
        shown: list[str] = []

        async def printed() -> str | None:
            shown.append(await self.run(command, f"UNTIL{len(shown)}"))
            return shown[-1] if needle in shown[-1] else None

        return await until(printed, f"{command!r} prints {needle!r}", within=within, interval=0.1)


async def workspace_with_token(make_user: Any) -> tuple[Client, str, str]:
    browser = await make_user()
    ws = (await browser.post("/api/workspaces", {"name": "term"})).json["uuid"]
    token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
    return browser, ws, token


async def workspace_terminal(make_user: Any, base_url: str) -> tuple[str, Client, Terminal]:
    """A new user's workspace, a token client for it, and a terminal open in it."""
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    return ws, Client(base_url, token=token), terminal


async def open_terminal(base_url: str, ws: str, token: str) -> tuple[str, Terminal]:
    api = Client(base_url, token=token)
    created = await api.post(f"/w/{ws}/api/terminals")
    assert created.status == 200, created.body
    name = created.json["name"]
    terminal = await Terminal.open(base_url, f"/w/{ws}/terminals/websocket/{name}", token)
    return name, terminal


async def test_terminal_runs_commands_on_the_workspace_files(make_user: Any, base_url: str) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    assert (await api.get(f"/w/{ws}/api/terminals")).json == []

    name, terminal = await open_terminal(base_url, ws, token)
    assert name == "1"
    await terminal.send("echo $((6*7))\r")
    await terminal.expect("42")
    main = await terminal.run("cat main.py", "DONE1")
    assert "Hello from your workspace" in main

    saved = await api.request(
        "PUT",
        f"/w/{ws}/api/contents/notes.txt",
        {"type": "file", "format": "text", "content": "saved through the API"},
    )
    assert saved.status == 201
    await terminal.run_until("cat notes.txt", "saved through the API")
    big = os.urandom(2 * 1024 * 1024 + 5)  # stored in three parts, mirrored whole
    saved = await api.request(
        "PUT",
        f"/w/{ws}/api/contents/big.bin",
        {"type": "file", "format": "base64", "content": base64.b64encode(big).decode()},
    )
    assert saved.status == 201
    await terminal.run_until("sha256sum big.bin", hashlib.sha256(big).hexdigest())
    out = await terminal.run(
        "python -c 'import numpy, pandas, scipy; print(numpy.arange(3).sum())'", "DONE3"
    )
    assert "3" in out

    listed = await api.get(f"/w/{ws}/api/terminals")
    assert [t["name"] for t in listed.json] == ["1"]
    assert (await api.get(f"/w/{ws}/api/terminals/1")).status == 200
    assert (await api.delete(f"/w/{ws}/api/terminals/1")).status == 204
    assert (await api.get(f"/w/{ws}/api/terminals/1")).status == 404


async def test_reconnect_replays_scrollback(make_user: Any, base_url: str) -> None:
    _, ws, token = await workspace_with_token(make_user)
    name, terminal = await open_terminal(base_url, ws, token)
    await terminal.run("echo first-$((1+1))", "MARK1")
    terminal.connection.close()
    again = await Terminal.open(base_url, f"/w/{ws}/terminals/websocket/{name}", token)
    await again.expect("first-2")
    await again.run("echo second-$((2+2))", "MARK2")
    assert "second-4" in again.output


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        json.dumps(["stdin", 123]),
        json.dumps(["set_size", -1, 10**9]),
        "x" * (2 << 20),
        # Shaped like a keystroke, which is accepted without parsing, but not one.
        '["stdin","]',
        '["stdin","a","b"]',
        '["stdin", "a\tb"]',
        '["stdin","a\\"]',
        b"\x00binary",
    ],
)
async def test_bad_frames_close_the_socket_cleanly(
    make_user: Any, base_url: str, frame: str | bytes
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    await terminal.connection.write_message(frame, binary=isinstance(frame, bytes))
    while await terminal.connection.read_message() is not None:
        pass
    assert terminal.connection.close_code in {1003, 1009}


async def test_text_that_is_not_utf8_closes_the_socket_and_spares_the_terminal(
    make_user: Any, base_url: str
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    name, terminal = await open_terminal(base_url, ws, token)
    await terminal.run("echo before", "BEFORE")
    # A text frame whose bytes are not UTF-8 (tornado sends bytes as they are).
    await terminal.connection.write_message(b'["stdin", "\xff\xfe"]', binary=False)
    while await terminal.connection.read_message() is not None:
        pass
    assert terminal.connection.close_code == 1007
    again = await Terminal.open(base_url, f"/w/{ws}/terminals/websocket/{name}", token)
    await again.run("echo after-$((3+4))", "AFTER")
    assert "after-7" in again.output


async def test_keystrokes_in_one_write_arrive_whole_and_in_order(
    make_user: Any, base_url: str
) -> None:
    """Frames that reach the relay in one read (and a large one split over several) all go
    on, in order."""
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    connection = terminal.connection
    # Not awaited one by one, so that the frames leave in one burst; the last is larger than
    # one read of the relay's.
    writes = [connection.write_message(json.dumps(["stdin", c])) for c in "echo ab"]
    writes.append(connection.write_message(json.dumps(["stdin", "c" * 70_000 + "\r"])))
    await asyncio.gather(*writes)
    await terminal.send("echo typed-$((2*21))\r")
    await terminal.expect("typed-42")
    assert "ab" + "c" * 1000 in terminal.output


async def test_a_terminal_that_exits_says_so_and_closes_with_1011(
    make_user: Any, base_url: str
) -> None:
    """The agent ends the socket (1000) when the shell exits; the browser gets 1011, after
    which @jupyterlab/services reconnects (and finds the terminal gone)."""
    _, ws, token = await workspace_with_token(make_user)
    _, terminal = await open_terminal(base_url, ws, token)
    await terminal.run("echo alive", "ALIVE")
    await terminal.send("exit\r")
    frames = []
    while (message := await terminal.connection.read_message()) is not None:
        frames.append(json.loads(message))
    assert ["disconnect", 1] in frames
    assert terminal.connection.close_code == 1011


async def test_a_slow_browser_pauses_the_terminal_output(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    """Output the browser does not read stops the agent reading the PTY: what it has read
    stops growing far below what the program prints."""
    printed = 200_000_000
    _, ws, token = await workspace_with_token(make_user)
    name, terminal = await open_terminal(base_url, ws, token)
    await terminal.run("echo ready", "READY")
    sandboxes: Sandboxes = jp_serverapp.web_app.settings["sandboxes"]
    row = await sandboxes.row(uuid.UUID(ws))
    assert row is not None
    agent = sandboxes.client(row)
    await terminal.send(f"yes | head -c {printed}\r")
    offsets: list[int] = []

    async def stalled() -> bool:
        offsets.append((await agent.json("GET", f"/api/terminals/{name}"))["output_offset"])
        return len(offsets) > 2 and offsets[-1] == offsets[-2]

    await until(stalled, "the terminal stops reading while nobody reads", within=60, interval=0.5)
    assert offsets[-1] < printed // 4
    await terminal.send("\x03")
    await terminal.send("echo back-$((5*5))\r")
    await terminal.expect("back-25", within=60)


async def test_other_users_cannot_reach_terminals(
    make_user: Any, make_token_client: TokenClientFactory, base_url: str
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    name, _ = await open_terminal(base_url, ws, token)
    mallory = await make_token_client("mallory")
    assert (await mallory.post(f"/w/{ws}/api/terminals")).status == 404
    assert (await mallory.get(f"/w/{ws}/api/terminals")).status == 404
    assert (await mallory.get(f"/w/{ws}/api/terminals/{name}")).status == 404
    assert (await mallory.delete(f"/w/{ws}/api/terminals/{name}")).status == 404
    with pytest.raises(HTTPClientError) as refused:
        await Terminal.open(base_url, f"/w/{ws}/terminals/websocket/{name}", mallory.token or "")
    assert refused.value.code == 404


async def test_websocket_origin_is_checked(make_user: Any, base_url: str) -> None:
    browser, ws, token = await workspace_with_token(make_user)
    name, _ = await open_terminal(base_url, ws, token)
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/terminals/websocket/{name}"
    evil = HTTPRequest(url, headers={"Cookie": cookie, "Origin": "https://evil.example"})
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(evil)
    assert refused.value.code == 403
    same_site = HTTPRequest(url, headers={"Cookie": cookie, "Origin": base_url})
    OPENED.append(await websocket_connect(same_site))


async def test_sandbox_lifecycle_api(make_user: Any, base_url: str) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    state = await api.get(f"/api/workspaces/{ws}/sandbox")
    assert state.json["state"] == "stopped"
    first, second = await asyncio.gather(
        api.post(f"/api/workspaces/{ws}/sandbox"), api.post(f"/api/workspaces/{ws}/sandbox")
    )
    assert first.status == second.status == 200
    assert first.json["state"] == second.json["state"] == "running"
    assert first.json["started_at"] == second.json["started_at"]

    progress = await api.get(f"/api/workspaces/{ws}/sandbox/progress")
    events = [
        json.loads(line[len("data: ") :])
        for line in progress.body.decode().splitlines()
        if line.startswith("data: ")
    ]
    assert events[-1]["ready"] is True
    assert events[-1]["progress"] == 100

    # All the caller's sandboxes in one request; another user's are not listed.
    idle = (await api.post("/api/workspaces", {"name": "never opened"})).json["uuid"]
    listed = (await api.get("/api/sandboxes")).json
    assert [(s["workspace"], s["state"]) for s in listed] == [(ws, "running")]
    assert idle not in {s["workspace"] for s in listed}
    other = await make_user("somebody")
    assert (await other.get("/api/sandboxes")).json == []

    assert (await api.delete(f"/api/workspaces/{ws}/sandbox")).status == 204
    assert (await api.get(f"/api/workspaces/{ws}/sandbox")).json["state"] == "stopped"
    assert (await api.get("/api/sandboxes")).json[0]["state"] == "stopped"
    assert (await api.get(f"/w/{ws}/api/terminals")).json == []


async def test_concurrent_starts_make_one_sandbox(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    results = await asyncio.gather(*(api.post(f"/w/{ws}/api/terminals") for _ in range(4)))
    assert {r.status for r in results} == {200}
    assert sorted(r.json["name"] for r in results) == ["1", "2", "3", "4"]
    sandboxes = jp_serverapp.web_app.settings["sandboxes"]
    assert len(await sandboxes.spawner.find_running()) == 1


async def test_workspaces_cannot_see_each_other(make_user: Any, base_url: str) -> None:
    _, ws_a, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    ws_b = (await api.post("/api/workspaces", {"name": "other"})).json["uuid"]
    await api.request(
        "PUT",
        f"/w/{ws_a}/api/contents/only-in-a-7f3.txt",
        {"type": "file", "format": "text", "content": "only in A"},
    )
    _, term_a = await open_terminal(base_url, ws_a, token)
    _, term_b = await open_terminal(base_url, ws_b, token)
    assert "only-in-a-7f3.txt" in await term_a.run("ls", "LISTED")
    await term_a.run("sleep 300 &", "STARTED")
    # Results are prefixed with "42:", which the echo of the typed command cannot contain.
    tag = 'sed "s/^/$((40+2)):/"'
    seen = await term_b.run(
        f"ls -a /workspace | {tag}; ps -e -o comm= | {tag}; "
        f"find / -name 'only-in-a-*' 2>/dev/null | {tag}",
        "LOOKED",
    )
    results = [line for line in seen.splitlines() if line.startswith("42:")]
    assert "42:main.py" in "\n".join(results)
    assert any(line.startswith("42:bash") for line in results)
    assert not any("only-in-a" in line or "sleep" in line for line in results), "\n".join(results)


class TestCulling:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Sandboxes": {"idle_timeout": 1}}

    async def test_idle_sandbox_is_stopped_and_files_survive(
        self, make_user: Any, base_url: str, jp_serverapp: PlatformApp
    ) -> None:
        ws, api, terminal = await workspace_terminal(make_user, base_url)
        await terminal.run("echo kept > made-here.txt", "WROTE")
        sandboxes = jp_serverapp.web_app.settings["sandboxes"]

        async def culled() -> bool:
            # Reads are clients polling, not the user: they do not keep a sandbox alive.
            assert (await api.get(f"/w/{ws}/api/terminals")).status == 200
            assert (await api.get(f"/w/{ws}/api/contents/main.py")).status == 200
            return bool(await sandboxes.cull_once() == 1)

        await until(culled, "the idle sandbox is culled while clients read", interval=0.2)
        assert (await api.get(f"/api/workspaces/{ws}/sandbox")).json["state"] == "stopped"
        assert await sandboxes.spawner.find_running() == []
        assert (await api.get(f"/w/{ws}/api/contents/main.py")).status == 200


async def test_killed_agent_is_replaced_with_files_intact(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    big = os.urandom(3 * 1024 * 1024 + 7)  # stored in four parts, loaded as one tar member
    for path, content in (("data/big.bin", big), ("data/empty.txt", b"")):
        model = {"type": "file", "format": "base64", "content": base64.b64encode(content).decode()}
        await api.request("PUT", f"/w/{ws}/api/contents/data", {"type": "directory"})
        assert (await api.request("PUT", f"/w/{ws}/api/contents/{path}", model)).status == 201
    await open_terminal(base_url, ws, token)
    sandboxes = jp_serverapp.web_app.settings["sandboxes"]
    (handle,) = await sandboxes.spawner.find_running()
    os.kill(int(handle.state["pid"]), signal.SIGKILL)

    async def ended() -> bool:
        return not await sandboxes.spawner.poll(handle)

    await until(ended, "the killed sandbox ends", within=5)
    failed = (await api.get(f"/api/workspaces/{ws}/sandbox")).json
    assert failed["state"] == "failed"
    assert "files are safe" in failed["reason"]
    name, terminal = await open_terminal(base_url, ws, token)
    assert name == "1"
    assert "Hello from your workspace" in await terminal.run("cat main.py", "AGAIN")
    listing = await terminal.run("sha256sum data/big.bin; wc -c < data/empty.txt", "SUMS")
    assert hashlib.sha256(big).hexdigest() in listing
    assert "0" in listing.replace("\r", "").splitlines()  # the empty file
    assert (await api.get(f"/api/workspaces/{ws}/sandbox")).json["state"] == "running"


class TestTerminalCap:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Terminals": {"max_terminals_per_user": 2}}

    async def test_cap_counts_every_workspace_of_the_user(
        self, make_user: Any, base_url: str
    ) -> None:
        _, ws_a, token = await workspace_with_token(make_user)
        api = Client(base_url, token=token)
        ws_b = (await api.post("/api/workspaces", {"name": "second"})).json["uuid"]
        assert (await api.post(f"/w/{ws_a}/api/terminals")).status == 200
        assert (await api.post(f"/w/{ws_b}/api/terminals")).status == 200
        refused = await api.post(f"/w/{ws_a}/api/terminals")
        assert refused.status == 409
        assert "2 terminals open" in refused.json["message"]
        assert (await api.delete(f"/w/{ws_b}/api/terminals/1")).status == 204
        assert (await api.post(f"/w/{ws_a}/api/terminals")).status == 200


class TestKeepAlive:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        # Pings every 0.1 s; no pong for 0.3 s closes the socket.
        pings = {"ws_ping_interval": 100, "ws_ping_timeout": 300}
        return {"PlatformApp": {"tornado_settings": pings}}

    async def test_the_browser_pongs_keep_a_relayed_terminal_open(
        self, make_user: Any, base_url: str
    ) -> None:
        """The relay hands the browser's pongs to the keep-alive that pings it; without them
        the socket would close after 0.3 s."""
        _, ws, token = await workspace_with_token(make_user)
        api = Client(base_url, token=token)
        name = (await api.post(f"/w/{ws}/api/terminals")).json["name"]
        terminal = await Terminal.open(base_url, f"/w/{ws}/terminals/websocket/{name}", token)
        pings: list[bytes] = []
        terminal.connection.on_ping = pings.append  # type: ignore[method-assign]
        await terminal.run("echo first", "FIRST")
        # Ten pings span three timeouts; the client answers each one as it reads.
        await terminal.send("sleep 1.5; echo second-$((6+6))\r")
        await terminal.expect("second-12")
        assert len(pings) >= 10
        await terminal.run("echo third", "THIRD")


class TestWarmPool:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Spawner": {"warm_pool_size": 1}}

    async def test_opening_claims_a_warm_sandbox_and_the_pool_refills(
        self, make_user: Any, base_url: str, jp_serverapp: PlatformApp
    ) -> None:
        sandboxes = jp_serverapp.web_app.settings["sandboxes"]
        await until(lambda: pool_ready(sandboxes), "the pool is filled")
        (pooled,) = await sandboxes.spawner.find_running()

        _, ws, token = await workspace_with_token(make_user)
        _, terminal = await open_terminal(base_url, ws, token)
        assert "Hello from your workspace" in await terminal.run("cat main.py", "WARM")
        api = Client(base_url, token=token)
        state = (await api.get(f"/api/workspaces/{ws}/sandbox")).json
        assert state["state"] == "running"
        row = await sandboxes.row(uuid.UUID(ws))
        assert str(row["id"]) == pooled.sandbox_id

        # A replacement starts in the background, and it carries nothing of this workspace.
        async def refilled() -> bool:
            return len(await sandboxes.spawner.find_running()) >= 2

        await until(refilled, "the pool is refilled")
        _, other_ws, _ = await workspace_with_token_for(api)
        _, other = await open_terminal(base_url, other_ws, token)
        listing = await other.run('ls -A /workspace | sed "s/^/$((40+2)):/"', "LISTED")
        files = [line[3:] for line in listing.splitlines() if line.startswith("42:")]
        assert files == [".venv", "main.py"]  # its own venv, made when its agent started
        other_row = await sandboxes.row(uuid.UUID(other_ws))
        assert other_row["id"] != row["id"]


async def pool_ready(sandboxes: Any) -> bool:
    async with sandboxes.db.transaction() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM sandboxes WHERE workspace_id IS NULL AND state = 'running'"
        )
        row = await cur.fetchone()
    return bool(row and row["n"] == 1)


async def workspace_with_token_for(api: Client) -> tuple[Client, str, str]:
    ws = (await api.post("/api/workspaces", {"name": "another"})).json["uuid"]
    return api, ws, api.token or ""
