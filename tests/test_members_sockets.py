"""Members on a workspace's sockets: shared terminals and kernels (a viewer watches, an editor
types), and a revoked or re-roled member's sockets closing at once, on every replica."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection, websocket_connect

from extensions.sandboxes.access_watch import ACCESS_CHANGED
from tests.client import Client
from tests.kernel_client import KernelSocket, close_opened
from tests.test_members import shared_workspace
from tests.test_restart import Platform, data_dir  # noqa: F401  (fixture)
from tests.test_terminals import OPENED, Terminal
from tests.waiting import until

TokenClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    """Close every socket a test opened."""
    yield
    close_opened()
    while OPENED:
        OPENED.pop().close()


async def connect(url: str) -> WebSocketClientConnection:
    """A WebSocket the test's end closes."""
    connection = await websocket_connect(url)
    OPENED.append(connection)
    return connection


async def closed(connection: WebSocketClientConnection, within: float = 20) -> tuple[int, str]:
    """Read until the server closes the socket; its (code, reason)."""
    while await asyncio.wait_for(connection.read_message(), within) is not None:
        pass
    return connection.close_code or 0, connection.close_reason or ""


async def test_members_share_a_terminal_a_viewer_only_watches(
    make_token_client: TokenClientFactory, base_url: str
) -> None:
    ws, alice, members = await shared_workspace(make_token_client, bob="editor", carol="viewer")
    bob, carol = members["bob"], members["carol"]
    # A viewer may start the sandbox (to watch it), not open a terminal.
    assert (await carol.post(f"/api/workspaces/{ws}/sandbox")).status == 200
    assert (await carol.post(f"/w/{ws}/api/terminals")).status == 403
    created = await alice.post(f"/w/{ws}/api/terminals")
    assert created.status == 200, created.body
    path = f"/w/{ws}/terminals/websocket/{created.json['name']}"
    screens = {
        name: await Terminal.open(base_url, path, client.token or "")
        for name, client in [("alice", alice), ("bob", bob), ("carol", carol)]
    }

    await screens["carol"].send("echo VIEWER-$((2+3))\r")
    await screens["carol"].connection.write_message(json.dumps(["set_size", 5, 20]))
    await screens["alice"].send("echo OWNER-$((4+4))\r")
    for screen in screens.values():
        await screen.expect("OWNER-8")
    await screens["bob"].send("echo EDITOR-$((5+5)) SIZE-$(stty size | tr ' ' x) EN''D\r")
    for screen in screens.values():
        await screen.expect("EDITOR-10")
    # The viewer's keys never reached bash, nor did their terminal size.
    size = re.search(r"EDITOR-10 SIZE-(\d+x\d+) END", await screens["alice"].expect(" END"))
    assert size is not None
    assert size[1] != "5x20"
    for screen in screens.values():
        assert "VIEWER-5" not in screen.output


async def test_a_viewer_watches_a_kernel_but_runs_nothing(
    make_token_client: TokenClientFactory, base_url: str
) -> None:
    ws, alice, members = await shared_workspace(make_token_client, carol="viewer")
    carol = members["carol"]
    started = await alice.post(f"/w/{ws}/api/kernels", {"name": "python3"})
    assert started.status == 201, started.body
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/api/kernels/{started.json['id']}/channels"
    owner = await KernelSocket.open(f"{url}?token={alice.token}")
    viewer = await KernelSocket.open(f"{url}?token={carol.token}")

    await viewer.request("execute_request", {"code": "print('VIEWER-' + str(5))"})
    await viewer.request("comm_open", {"comm_id": "c", "target_name": "x", "data": {}})
    await viewer.request("input_reply", {"value": "typed"}, channel="stdin")
    await viewer.request("interrupt_request", {}, channel="control")
    # kernel_info_request passes: its reply comes after whatever was sent before it.
    info = await viewer.request("kernel_info_request", {})
    reply = await viewer.until(
        lambda m: m["channel"] == "shell" and m["parent_header"].get("msg_id") == info
    )
    assert reply["header"]["msg_type"] == "kernel_info_reply"

    ran = await owner.execute("print(6 * 7)")
    assert ran.stdout == "42\n"
    assert ran.shell is not None
    assert ran.shell["execution_count"] == 1  # the viewer's code never ran
    # The viewer sees the owner's run: its input and its output.
    await viewer.until(
        lambda m: m["header"]["msg_type"] == "stream" and m["content"]["text"] == "42\n"
    )
    seen = [m for m in viewer.messages if m["header"]["msg_type"] == "execute_input"]
    assert [m["content"]["code"] for m in seen] == ["print(6 * 7)"]
    assert not any("VIEWER-5" in json.dumps(m["content"]) for m in owner.messages)


async def test_revoking_a_member_closes_their_sockets_at_once(
    make_token_client: TokenClientFactory, base_url: str
) -> None:
    ws, alice, members = await shared_workspace(make_token_client, bob="editor", carol="editor")
    bob, carol = members["bob"], members["carol"]
    terminal = (await alice.post(f"/w/{ws}/api/terminals")).json["name"]
    kernel = (await alice.post(f"/w/{ws}/api/kernels", {"name": "python3"})).json["id"]
    ws_url = base_url.replace("http", "ws", 1)

    async def sockets(client: Client) -> list[WebSocketClientConnection]:
        token = f"?token={client.token}"
        events = await connect(f"{ws_url}/w/{ws}/api/events{token}")
        assert json.loads(await events.read_message() or "{}")["type"] == "sandbox"
        screen = await Terminal.open(
            base_url, f"/w/{ws}/terminals/websocket/{terminal}", client.token or ""
        )
        channels = await KernelSocket.open(f"{ws_url}/w/{ws}/api/kernels/{kernel}/channels{token}")
        return [events, screen.connection, channels.conn]

    owners = await sockets(alice)
    bobs = await sockets(bob)
    carols = await sockets(carol)

    assert (await alice.delete(f"/api/workspaces/{ws}/members/bob")).status == 204
    for connection in bobs:
        code, reason = await closed(connection)
        assert (code, reason) == (ACCESS_CHANGED, "Your access to this workspace was revoked.")
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(f"{ws_url}/w/{ws}/api/events?token={bob.token}")
    assert refused.value.code == 404

    # A lowered role closes them too; the reconnected terminal is read-only.
    changed = await alice.patch(f"/api/workspaces/{ws}/members/carol", {"role": "viewer"})
    assert changed.status == 200
    for connection in carols:
        assert await closed(connection) == (
            ACCESS_CHANGED,
            "Your role in this workspace is now viewer.",
        )
    watcher = await Terminal.open(
        base_url, f"/w/{ws}/terminals/websocket/{terminal}", carol.token or ""
    )
    await watcher.send("echo CAROL-$((3+3))\r")
    owner_screen = Terminal(owners[1])
    await owner_screen.send("echo STILL-$((1+1))\r")
    await watcher.expect("STILL-2")
    assert "CAROL-6" not in (await owner_screen.expect("STILL-2"))
    # Everyone else's sockets stay open: the owner's events still arrive.
    saved = await alice.request(
        "PUT",
        f"/w/{ws}/api/contents/after.txt",
        {"type": "file", "format": "text", "content": "x"},
    )
    assert saved.status == 201

    async def heard_save() -> bool:
        event = json.loads(await asyncio.wait_for(owners[0].read_message(), 20) or "{}")
        return event.get("path") == "after.txt"

    await until(heard_save, "the owner's events socket hears the save")


@pytest.mark.slow
async def test_revoking_closes_sockets_held_by_another_replica(
    database_url: str,
    data_dir: Path,  # noqa: F811
) -> None:
    a, b = Platform(database_url, data_dir), Platform(database_url, data_dir)
    await asyncio.gather(a.start(), b.start())
    try:
        _, alice = await a.sign_up()
        bob_browser = Client(b.url)
        account = {"username": "bob", "password": "correct horse"}
        assert (await bob_browser.post("/api/accounts/register", account)).status == 201
        assert (await bob_browser.post("/api/accounts/login", account)).status == 200
        made = await bob_browser.post("/api/accounts/tokens", {"name": "t"})
        assert made.status == 201, made.body
        bob = Client(b.url, token=made.json["token"])
        ws = (await alice.post("/api/workspaces", {"name": "team"})).json["uuid"]
        shared = await alice.post(
            f"/api/workspaces/{ws}/members", {"username": "bob", "role": "editor"}
        )
        assert shared.status == 201, shared.body
        terminal = (await alice.post(f"/w/{ws}/api/terminals")).json["name"]
        on_b = b.url.replace("http", "ws", 1)
        events = await connect(f"{on_b}/w/{ws}/api/events?token={bob.token}")
        assert json.loads(await events.read_message() or "{}")["type"] == "sandbox"
        screen = await Terminal.open(
            b.url, f"/w/{ws}/terminals/websocket/{terminal}", bob.token or ""
        )

        # Revoked through replica A: B closes the sockets it holds.
        assert (await alice.delete(f"/api/workspaces/{ws}/members/bob")).status == 204
        for connection in (events, screen.connection):
            code, _ = await closed(connection)
            assert code == ACCESS_CHANGED
    finally:
        a.kill()
        b.kill()
