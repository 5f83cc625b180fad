"""Shared text documents over ``WS /w/<uuid>/api/collaboration/text/<path>``, driven by
y-websocket clients made of pycrdt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pycrdt import (
    Awareness,
    Doc,
    TransactionEvent,
    YMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from extensions.collaboration.merge import text_of
from extensions.collaboration.protocol import SAVE_REQUEST, SAVE_STATUS
from extensions.collaboration.rooms import Collaboration
from platform_server.app import PlatformApp
from tests.client import Client
from tests.conftest import UserFactory
from tests.test_restart import Platform, data_dir  # noqa: F401  (fixture)
from tests.waiting import until


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    """Quick saves and closes: the tests wait for them."""
    return {"Collaboration": {"save_delay": 0.2, "close_delay": 0.5}}


class YClient:
    """A y-websocket client: a pycrdt document synced through one socket, as the browser's
    ``WebsocketProvider`` does it."""

    def __init__(self, socket: WebSocketClientConnection) -> None:
        self.socket = socket
        self.doc: Doc = Doc()
        self.text = text_of(self.doc)
        self.awareness = Awareness(self.doc)
        self.statuses: list[dict[str, bool]] = []
        self.synced = asyncio.Event()
        self._remote = False
        self.doc.observe(self._local_change)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, state: bytes | None = None, **headers: str) -> YClient:
        """Connect; ``state``: a document this client kept from an earlier connection."""
        socket = await websocket_connect(HTTPRequest(url, headers=headers))
        client = cls(socket)
        if state is not None:
            client._remote = True
            client.doc.apply_update(state)
            client._remote = False
        await client.send(create_sync_message(client.doc))
        return client

    async def send(self, message: bytes) -> None:
        await self.socket.write_message(message, binary=True)

    def _local_change(self, event: TransactionEvent) -> None:
        if not self._remote:
            # Written at once (not awaited), so frames leave in the order they were made.
            self.socket.write_message(create_update_message(event.update), binary=True)

    async def _read(self) -> None:
        while (message := await self.socket.read_message()) is not None:
            assert isinstance(message, bytes)
            if message[0] == YMessageType.SYNC:
                self._remote = True
                try:
                    reply = handle_sync_message(message[1:], self.doc)
                finally:
                    self._remote = False
                if reply is not None:
                    await self.send(reply)
                if message[1] == 1:
                    self.synced.set()
            elif message[0] == YMessageType.AWARENESS:
                self.awareness.apply_awareness_update(read_message(message[1:]), "remote")
            elif message[0] == SAVE_STATUS:
                self.statuses.append(json.loads(message[1:]))

    def type(self, index: int, value: str) -> None:
        """Insert text as a person typing would (one local transaction)."""
        self.text.insert(index, value)

    async def say_who(self, name: str) -> None:
        self.awareness.set_local_state({"user": {"name": name, "color": "#1f77b4"}})
        update = self.awareness.encode_awareness_update([self.awareness.client_id])
        await self.send(create_awareness_message(update))

    def names(self) -> set[str]:
        """The names of the people this client sees (its awareness states)."""
        states = self.awareness.states.values()
        return {s["user"]["name"] for s in states if isinstance(s, dict) and "user" in s}

    @property
    def closed(self) -> bool:
        return self._reader.done()

    def close(self) -> None:
        self.socket.close()


def socket_url(base_url: str, ws: str, path: str, token: str) -> str:
    return f"{base_url.replace('http', 'ws', 1)}/w/{ws}/api/collaboration/text/{path}?token={token}"


async def token_and_workspace(client: Client) -> tuple[str, str]:
    """An API token of the client's user and a new workspace of theirs."""
    token = (await client.post("/api/accounts/tokens", {"name": "tests"})).json["token"]
    ws = (await client.post("/api/workspaces", {"name": "shared"})).json["uuid"]
    return token, ws


async def put_text(client: Client, ws: str, path: str, text: str) -> None:
    response = await client.request(
        "PUT", f"/w/{ws}/api/contents/{path}", {"type": "file", "format": "text", "content": text}
    )
    assert response.status in {200, 201}, response.body


async def file_text(client: Client, ws: str, path: str) -> str:
    return str((await client.get(f"/w/{ws}/api/contents/{path}")).json["content"])


async def type_at_once(one: YClient, two: YClient, keys: int) -> str:
    """Both clients type ``keys`` times, interleaved (one at the start, two at the end), each
    before hearing the other; returns the text they converge to."""
    for i in range(keys):
        one.type(0, f"a{i} ")
        two.type(len(str(two.text)), f"b{i} ")
    last = keys - 1
    await until(
        lambda: (
            str(one.text) == str(two.text)
            and f"b{last} " in str(one.text)
            and f"a{last} " in str(two.text)
        ),
        "the two documents converge",
    )
    final = str(one.text)
    assert all(f"a{i} " in final and f"b{i} " in final for i in range(keys))
    assert final.count("hello\n") == 1
    return final


class Shared:
    """Alice's workspace with notes.txt, and a way to open a file's document."""

    def __init__(self, alice: Client, token: str, ws: str, base_url: str) -> None:
        self.alice, self.token, self.ws, self.base_url = alice, token, ws, base_url

    async def connect(self, path: str = "notes.txt") -> YClient:
        client = await YClient.connect(socket_url(self.base_url, self.ws, path, self.token))
        await asyncio.wait_for(client.synced.wait(), 20)
        return client


@pytest.fixture
def share(make_user: UserFactory, base_url: str) -> Callable[[], Awaitable[Shared]]:
    async def make() -> Shared:
        alice = await make_user("alice")
        token, ws = await token_and_workspace(alice)
        await put_text(alice, ws, "notes.txt", "hello\n")
        return Shared(alice, token, ws, base_url)

    return make


Share = Callable[[], Awaitable[Shared]]


async def test_two_clients_converge_and_the_text_is_saved(
    share: Share, jp_serverapp: PlatformApp
) -> None:
    shared = await share()
    alice, ws, connect = shared.alice, shared.ws, shared.connect
    one, two = await connect(), await connect()
    assert str(one.text) == str(two.text) == "hello\n"

    final = await type_at_once(one, two, 20)

    # Saved through the contents API, without anyone asking.
    async def saved() -> bool:
        return await file_text(alice, ws, "notes.txt") == final

    await until(saved, "the shared text is saved to the file")
    await until(lambda: {"saving": False, "saved": True} in one.statuses, "one hears it saved")

    # Closing the room (after the last client left) keeps the version as a checkpoint, and
    # compacts the document's updates into one.
    kept = one.doc.get_update()
    one.close()
    two.close()
    collaboration: Collaboration = jp_serverapp.web_app.settings["collaboration"]
    await until(lambda: not collaboration.rooms and not collaboration._closing, "the room closes")
    checkpoints = (await alice.get(f"/w/{ws}/api/contents/notes.txt/checkpoints")).json
    assert len(checkpoints) == 1
    async with collaboration.db.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM collaboration_updates")
        assert (await cur.fetchone() or {})["n"] == 1

    # The next client finds the text; one that kept its document (a browser across a platform
    # restart) merges into the same history, without the text twice.
    again = await connect()
    assert str(again.text) == final
    returning = await YClient.connect(
        socket_url(shared.base_url, ws, "notes.txt", shared.token), state=kept
    )
    await asyncio.wait_for(returning.synced.wait(), 20)
    returning.type(0, "back ")
    expected = "back " + final
    await until(lambda: str(again.text) == str(returning.text) == expected, "one text, once")


async def test_ctrl_s_saves_at_once_with_a_checkpoint(
    share: Share, jp_serverapp: PlatformApp
) -> None:
    shared = await share()
    alice, ws, connect = shared.alice, shared.ws, shared.connect
    jp_serverapp.web_app.settings["collaboration"].save_delay = 3600
    one = await connect()
    one.type(0, "now ")
    await one.send(bytes([SAVE_REQUEST]))

    async def saved() -> bool:
        return await file_text(alice, ws, "notes.txt") == "now hello\n"

    await until(saved, "Ctrl+S saved the text")
    await until(lambda: {"saving": False, "saved": True} in one.statuses, "one hears it saved")
    checkpoints = (await alice.get(f"/w/{ws}/api/contents/notes.txt/checkpoints")).json
    assert len(checkpoints) == 1


async def test_clients_opening_at_once_seed_the_text_once(
    share: Share,
) -> None:
    connect = (await share()).connect
    clients = await asyncio.gather(*(connect() for _ in range(5)))
    assert {str(c.text) for c in clients} == {"hello\n"}


async def test_a_change_made_another_way_merges_with_unsaved_typing(
    share: Share, jp_serverapp: PlatformApp
) -> None:
    shared = await share()
    alice, ws, connect = shared.alice, shared.ws, shared.connect
    jp_serverapp.web_app.settings["collaboration"].save_delay = 3600  # typing stays unsaved
    one, two = await connect(), await connect()
    one.type(0, "typed by one: ")
    await until(lambda: str(two.text) == "typed by one: hello\n", "two sees one's typing")

    # Another client's PUT (a terminal's change arrives the same way: a file event).
    await put_text(alice, ws, "notes.txt", "hello\nappended elsewhere\n")
    expected = "typed by one: hello\nappended elsewhere\n"
    await until(lambda: str(one.text) == str(two.text) == expected, "the change is merged")
    # The file is as it was put: the typing is still to be saved.
    assert await file_text(alice, ws, "notes.txt") == "hello\nappended elsewhere\n"

    # The room's own saves are not taken for changes made elsewhere.
    await one.send(bytes([SAVE_REQUEST]))

    async def saved() -> bool:
        return await file_text(alice, ws, "notes.txt") == expected

    await until(saved, "the merged text is saved")
    two.type(0, "more ")
    await until(lambda: str(one.text).startswith("more "), "one sees two's typing")
    await one.send(bytes([SAVE_REQUEST]))

    async def saved_again() -> bool:
        return await file_text(alice, ws, "notes.txt") == "more " + expected

    await until(saved_again, "the next save")
    assert str(one.text) == "more " + expected


async def test_presence_reaches_the_other_clients_and_leaves_with_them(
    share: Share,
) -> None:
    connect = (await share()).connect
    one, two = await connect(), await connect()
    await one.say_who("alice")
    await until(lambda: two.names() == {"alice"}, "two sees one's name")
    # Who is here is told to a client as it joins.
    late = await connect()
    await until(lambda: late.names() == {"alice"}, "a client joining later sees one's name")
    one.close()
    await until(lambda: two.names() == set(), "one's presence goes when its socket closes")

    # A name shown is the user's own: another closes the socket, and nobody sees it.
    three = await connect()
    await three.say_who("mallory")
    await until(lambda: three.closed, "the socket is closed")
    assert three.socket.close_code == 1008
    assert two.names() == set()


async def test_a_viewer_receives_but_cannot_write(
    share: Share, make_user: UserFactory, base_url: str
) -> None:
    shared = await share()
    alice, ws = shared.alice, shared.ws
    bob = await make_user("bob")
    bob_token = (await bob.post("/api/accounts/tokens", {"name": "tests"})).json["token"]
    added = await alice.post(f"/api/workspaces/{ws}/members", {"username": "bob", "role": "viewer"})
    assert added.status == 201, added.body
    editor = await shared.connect()
    viewer = await YClient.connect(socket_url(base_url, ws, "notes.txt", bob_token))
    await asyncio.wait_for(viewer.synced.wait(), 20)

    # The viewer's edits and save requests are dropped; the editor's reach the viewer.
    viewer.type(0, "from the viewer ")
    await viewer.send(bytes([SAVE_REQUEST]))
    editor.type(0, "from the editor ")
    await until(lambda: "from the editor" in str(viewer.text), "the viewer receives")
    await viewer.say_who("bob")
    await until(lambda: editor.names() == {"bob"}, "the viewer's presence is shown")
    assert "from the viewer" not in str(editor.text)
    await editor.send(bytes([SAVE_REQUEST]))

    async def saved() -> bool:
        return await file_text(alice, ws, "notes.txt") == "from the editor hello\n"

    await until(saved, "the editor's text alone is saved")

    # A new role closes the socket (4403: y-websocket does not reconnect by itself).
    changed = await alice.request("PATCH", f"/api/workspaces/{ws}/members/bob", {"role": "editor"})
    assert changed.status == 200, changed.body
    await until(lambda: viewer.closed, "the viewer's socket closes")
    assert viewer.socket.close_code == 4403
    again = await YClient.connect(socket_url(base_url, ws, "notes.txt", bob_token))
    await asyncio.wait_for(again.synced.wait(), 20)
    again.type(0, "now an editor ")
    await until(lambda: str(editor.text).startswith("now an editor "), "bob writes now")


async def test_refusals(share: Share, make_user: UserFactory, base_url: str) -> None:
    shared = await share()
    alice, token, ws, connect = shared.alice, shared.token, shared.ws, shared.connect

    async def status(url: str, **headers: str) -> tuple[int, dict[str, Any]]:
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(url, headers=headers))
        response = refused.value.response
        assert response is not None
        return refused.value.code, json.loads(response.body)

    url = socket_url(base_url, ws, "notes.txt", token)
    assert (await status(url.split("?")[0]))[0] == 401
    bob = await make_user("bob")
    bob_token, _ = await token_and_workspace(bob)
    assert (await status(socket_url(base_url, ws, "notes.txt", bob_token)))[0] == 404
    # Another site's page, with alice's login cookie.
    cookie = "; ".join(f"{k}={v}" for k, v in alice.cookies.items())
    code, _ = await status(url.split("?")[0], Cookie=cookie, Origin="http://evil.example")
    assert code == 403
    assert (await status(socket_url(base_url, ws, "missing.txt", token)))[0] == 404
    raw = await alice.request(
        "PUT",
        f"/w/{ws}/api/contents/blob.bin",
        {"type": "file", "format": "base64", "content": "//79/A=="},
    )
    assert raw.status == 201
    code, body = await status(socket_url(base_url, ws, "blob.bin", token))
    assert (code, body["reason"]) == (400, "bad format")
    await alice.request("PUT", f"/w/{ws}/api/contents/folder", {"type": "directory"})
    assert (await status(socket_url(base_url, ws, "folder", token)))[0] == 400

    # Frames that are not the protocol's close the socket, and change nothing.
    frames = [
        ("text", 1003),
        (b"\x00\x02\x09ab", 1007),  # a payload shorter than its length
        (b"\x00\x02\x03\xff\xff\xff", 1007),  # an update pycrdt cannot read
        (b"\x07", 1007),  # no such message type
        (create_awareness_message(b"\x01" + b"\x00" * 70_000), 1009),  # presence too large
    ]
    for frame, code in frames:
        client = await connect()
        await client.socket.write_message(frame, binary=isinstance(frame, bytes))
        await until(lambda c=client: c.closed, "the socket is closed")  # type: ignore[misc]
        assert client.socket.close_code == code
    assert await file_text(alice, ws, "notes.txt") == "hello\n"


@pytest.mark.slow
async def test_clients_of_two_replicas_converge(
    database_url: str,
    data_dir: Path,  # noqa: F811
) -> None:
    config = ("--Collaboration.save_delay=0.2", "--Collaboration.close_delay=0.5")
    a, b = Platform(database_url, data_dir, *config), Platform(database_url, data_dir, *config)
    await asyncio.gather(a.start(), b.start())
    try:
        _, on_a = await a.sign_up()
        assert on_a.token is not None
        token, ws = on_a.token, (await on_a.post("/api/workspaces", {"name": "x"})).json["uuid"]
        await put_text(on_a, ws, "notes.txt", "hello\n")
        # Opened on both at once: seeded once all the same.
        one, two = await asyncio.gather(
            YClient.connect(socket_url(a.url, ws, "notes.txt", token)),
            YClient.connect(socket_url(b.url, ws, "notes.txt", token)),
        )
        await until(lambda: one.synced.is_set() and two.synced.is_set(), "both synced")
        await type_at_once(one, two, 10)
        await one.say_who("alice")
        await until(lambda: two.names() == {"alice"}, "presence crosses replicas")
        final = str(one.text)

        async def saved() -> bool:
            return await file_text(on_a, ws, "notes.txt") == final

        await until(saved, "the text is saved once")
        # A change made another way is merged once, though both replicas hear of it.
        await put_text(on_a, ws, "notes.txt", final + "tail\n")
        await until(lambda: str(one.text) == str(two.text) == final + "tail\n", "merged once")
        one.close()
        two.close()
    finally:
        a.kill()
        b.kill()
