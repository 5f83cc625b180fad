"""Limits that stop one user from taking more than their share: the storage quota (checkpoints
included), the terminal and sandbox caps under concurrent requests, and events of every path
the API accepts (PostgreSQL's NOTIFY payload limit)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.web import HTTPError
from tornado.websocket import WebSocketClientConnection, websocket_connect

from extensions.workspaces import paths
from platform_server.app import PlatformApp
from tests.client import Client
from tests.test_contents_contract import bytes_used as stored_bytes

MiB = 1024 * 1024
SOCKETS: list[WebSocketClientConnection] = []


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    yield
    while SOCKETS:
        SOCKETS.pop().close()


async def user_with_workspaces(
    make_user: Any, base_url: str, *names: str
) -> tuple[Client, list[str], str]:
    """A user's API client (token), their new workspaces' uuids, and the token."""
    browser = await make_user()
    token = (await browser.post("/api/accounts/tokens", {"name": "t"})).json["token"]
    api = Client(base_url, token=token)
    made = [(await api.post("/api/workspaces", {"name": name})).json["uuid"] for name in names]
    return api, made, token


def contents(ws: str, path: str) -> str:
    return f"/w/{ws}/api/contents/{quote(path, safe='/')}"


async def bytes_used(api: Client, ws: str) -> int:
    response = await api.get(f"/api/workspaces/{ws}")
    assert response.status == 200, response.body
    return int(response.json["bytes_used"])


async def save(api: Client, ws: str, path: str, data: bytes) -> Any:
    body = {"type": "file", "format": "base64", "content": base64.b64encode(data).decode()}
    return await api.request("PUT", contents(ws, path), body)


# --- the storage quota -----------------------------------------------------------------------


class TestCheckpointsCountAgainstTheQuota:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"PostgresContentsManager": {"workspace_quota": 41 * MiB}}

    async def test_checkpoints_cannot_store_past_the_quota(
        self, make_user: Any, base_url: str
    ) -> None:
        api, (ws,), _ = await user_with_workspaces(make_user, base_url, "quota")
        starter = await bytes_used(api, ws)  # main.py
        assert starter > 0
        checkpoints = []
        for version in range(20):  # 20 distinct 2 MiB versions, each kept by a checkpoint
            saved = await save(api, ws, "big.bin", bytes([version]) * (2 * MiB))
            assert saved.status == (200 if version else 201), saved.body
            made = await api.post(contents(ws, "big.bin") + "/checkpoints")
            assert made.status == 201, made.body
            checkpoints.append(made.json["id"])
        # The file and its newest checkpoint share one content: 20 contents are stored.
        assert await bytes_used(api, ws) == starter + 40 * MiB

        refused = await save(api, ws, "big.bin", b"\xff" * (2 * MiB))
        assert refused.status == 413
        assert refused.json["reason"] == "quota_exceeded"
        assert "quota" in refused.json["message"]
        assert await bytes_used(api, ws) == starter + 40 * MiB
        stored = await api.get(contents(ws, "big.bin") + "?type=file&format=base64")
        assert base64.b64decode(stored.json["content"]) == bytes([19]) * (2 * MiB)
        listed = await api.get(contents(ws, "big.bin") + "/checkpoints")
        assert [c["id"] for c in listed.json] == checkpoints

        # Shared contents count once: a copy, and a checkpoint of unchanged bytes, store none.
        copied = await api.post(contents(ws, ""), {"copy_from": "big.bin"})
        assert copied.status == 201, copied.body
        again = await api.post(contents(ws, "big.bin") + "/checkpoints")
        assert again.json["id"] == checkpoints[-1]
        assert await bytes_used(api, ws) == starter + 40 * MiB

        # Deleting gives the bytes back.
        for checkpoint in checkpoints[:-1]:
            gone = await api.delete(contents(ws, "big.bin") + f"/checkpoints/{checkpoint}")
            assert gone.status == 204
        assert await bytes_used(api, ws) == starter + 2 * MiB
        assert (await save(api, ws, "other.bin", b"o" * (5 * MiB))).status == 201
        assert (await api.delete(contents(ws, "big.bin"))).status == 204
        assert await bytes_used(api, ws) == starter + 7 * MiB  # the copy keeps its content
        assert (await api.delete(contents(ws, copied.json["path"]))).status == 204
        assert (await api.delete(contents(ws, "other.bin"))).status == 204
        assert await bytes_used(api, ws) == starter


# --- the terminal and sandbox caps -------------------------------------------------------------


async def post_all(base_url: str, token: str, urls: list[str]) -> list[tuple[int, Any]]:
    """POST to every URL at once (a client of its own: the shared one sends 10 at a time)."""
    http = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(urls))
    try:
        responses = await asyncio.gather(
            *(
                http.fetch(
                    base_url.rstrip("/") + url,
                    method="POST",
                    body=b"",
                    headers={"Authorization": f"token {token}"},
                    raise_error=False,
                    request_timeout=300,
                )
                for url in urls
            )
        )
    finally:
        http.close()
    return [(r.code, json.loads(r.body) if r.body else None) for r in responses]


class TestConcurrentTerminalOpensKeepTheCap:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Terminals": {"max_terminals_per_user": 5}}

    async def test_50_concurrent_opens_cannot_exceed_the_terminal_cap(
        self, make_user: Any, base_url: str
    ) -> None:
        api, (ws,), token = await user_with_workspaces(make_user, base_url, "race")
        answers = await post_all(base_url, token, [f"/w/{ws}/api/terminals"] * 50)
        statuses = sorted(code for code, _ in answers)
        assert statuses == [200] * 5 + [409] * 45
        for code, body in answers:
            if code == 409:
                assert body["reason"] == "too_many_terminals"
                assert "5 terminals open" in body["message"]
        assert len((await api.get(f"/w/{ws}/api/terminals")).json) == 5


class TestSandboxesPerUser:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"Sandboxes": {"max_sandboxes_per_user": 2}}

    async def test_concurrent_opens_in_more_workspaces_than_allowed_start_no_more_sandboxes(
        self, make_user: Any, base_url: str, jp_serverapp: PlatformApp
    ) -> None:
        api, spaces, token = await user_with_workspaces(make_user, base_url, "a", "b", "c")
        answers = await post_all(base_url, token, [f"/w/{ws}/api/terminals" for ws in spaces])
        assert sorted(code for code, _ in answers) == [200, 200, 409]
        ((_, refused),) = [(code, body) for code, body in answers if code == 409]
        assert refused["reason"] == "too_many_sandboxes"
        assert "DELETE /api/workspaces/<uuid>/sandbox" in refused["message"]
        (left_out,) = [ws for ws, (code, _) in zip(spaces, answers, strict=True) if code == 409]
        sandboxes = jp_serverapp.web_app.settings["sandboxes"]
        assert len(await sandboxes.spawner.find_running()) == 2
        listed = (await api.get("/api/sandboxes")).json
        assert sorted(s["state"] for s in listed if s["state"] != "stopped") == ["running"] * 2

        # A kernel is refused the same way; stopping one sandbox makes room.
        kernel = await api.post(f"/w/{left_out}/api/kernels", {"name": "python3"})
        assert kernel.status == 409
        assert kernel.json["reason"] == "too_many_sandboxes"
        running = next(ws for ws in spaces if ws != left_out)
        assert (await api.delete(f"/api/workspaces/{running}/sandbox")).status == 204
        opened = await api.post(f"/w/{left_out}/api/terminals")
        assert opened.status == 200, opened.body
        assert len(await sandboxes.spawner.find_running()) == 2


# --- events of the longest paths -----------------------------------------------------------------


def longest_path(char: str, tail: str = "") -> str:
    """A path of exactly ``paths.MAX_PATH_BYTES`` bytes: names of ``char`` as long as a name
    may be, the last one padded with ASCII and ending in ``tail``."""
    width = len(char.encode())
    name = char * (paths.MAX_NAME_BYTES // width)
    names: list[str] = []
    room = paths.MAX_PATH_BYTES  # for the last name, after the names and a '/'
    while room > paths.MAX_NAME_BYTES:
        names.append(name)
        room = paths.MAX_PATH_BYTES - len("/".join(names).encode()) - 1
    while room < len(tail) + width:  # names fill the path exactly: one name a little shorter
        names[-1] = names[-1][:-1]
        room = paths.MAX_PATH_BYTES - len("/".join(names).encode()) - 1
    last = char * ((room - len(tail) - 1) // width)
    last += "x" * (room - len(tail) - len(last.encode())) + tail
    path = "/".join([*names, last])
    assert len(path.encode()) == paths.MAX_PATH_BYTES
    assert all(len(n.encode()) <= paths.MAX_NAME_BYTES for n in path.split("/"))
    return path


@pytest.mark.parametrize("char", ["é", "€", "😀"], ids=["2-byte", "3-byte", "4-byte"])
async def test_a_4096_byte_path_of_non_ascii_names_cannot_break_writes_or_events(
    make_user: Any, base_url: str, char: str
) -> None:
    api, (ws,), token = await user_with_workspaces(make_user, base_url, "long")
    events = await websocket_connect(
        base_url.replace("http", "ws", 1) + f"/w/{ws}/api/events?token={token}"
    )
    SOCKETS.append(events)
    first = json.loads(await asyncio.wait_for(events.read_message(), 20) or "null")
    assert first["type"] == "sandbox"

    async def next_file_event() -> dict[str, Any]:
        while True:
            raw = await asyncio.wait_for(events.read_message(), 20)
            assert raw is not None
            event: dict[str, Any] = json.loads(raw)
            if event["type"] != "sandbox":
                return event

    path = longest_path(char, tail="a")
    parent = path.rpartition("/")[0]
    folders = parent.split("/")
    for depth in range(1, len(folders) + 1):  # every folder, the deepest one long already
        folder = "/".join(folders[:depth])
        made = await api.request("PUT", contents(ws, folder), {"type": "directory"})
        assert made.status == 201, made.body
        assert (await next_file_event())["path"] == folder

    saved = await save(api, ws, path, b"at the limit")
    assert saved.status == 201, saved.body
    event = await next_file_event()
    assert (event["type"], event["path"]) == ("modified", path)

    # A move between two maximal paths: an event larger than any NOTIFY payload.
    other = longest_path(char, tail="b")
    moved = await api.patch(contents(ws, path), {"path": other})
    assert moved.status == 200, moved.body
    event = await next_file_event()
    assert (event["type"], event["path"], event["old_path"]) == ("moved", other, path)
    assert event["last_modified"] == moved.json["last_modified"]
    got = await api.get(contents(ws, other))
    assert got.status == 200
    assert got.json["content"] == "at the limit"

    assert (await api.delete(contents(ws, other))).status == 204
    assert await next_file_event() == {"type": "deleted", "path": other}
    assert (await api.delete(contents(ws, folders[0]))).status == 204
    assert await next_file_event() == {"type": "deleted", "path": folders[0]}


def test_longest_path_helper_makes_paths_the_api_accepts() -> None:
    for char in ("é", "€", "😀", "a"):
        path = longest_path(char, tail="z")
        assert paths.canonical(path) == path


async def test_chunks_sent_again_cannot_inflate_or_dodge_the_quota(
    make_pg: Any, database_url: str
) -> None:
    pg = make_pg(workspace_quota=10_000)
    chunk = {"type": "file", "format": "base64"}

    def part(n: int, data: bytes) -> dict[str, Any]:
        return {**chunk, "chunk": n, "content": base64.b64encode(data).decode()}

    await pg.save(part(1, b"a" * 4000), "up.bin")
    await pg.save(part(2, b"b" * 5000), "up.bin")
    await pg.save(part(2, b"c" * 1000), "up.bin")  # sent again, smaller: counted once
    assert stored_bytes(database_url, pg.workspace_id) == (5000, 5000)
    with pytest.raises(HTTPError) as refused:  # 5000 + 6000 > 10,000, however it is sent
        await pg.save(part(3, b"d" * 6000), "up.bin")
    assert refused.value.status_code == 413
    assert stored_bytes(database_url, pg.workspace_id) == (0, 0)  # the upload was dropped
