"""File sync and events: what programs do in the sandbox reaches PostgreSQL, and editors hear it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import pytest
from tornado.websocket import websocket_connect

from platform_server.app import PlatformApp
from tests.client import Client, Response
from tests.test_terminals import (  # noqa: F401
    OPENED,
    close_terminals,
    open_terminal,
    workspace_terminal,
    workspace_with_token,
)
from tests.waiting import until


async def until_get(api: Client, path: str, predicate: Any, within: float = 15) -> Response:
    """GET ``path`` until ``predicate(response)`` holds; return that response."""
    last: list[Response] = []

    async def answered() -> Response | None:
        last.append(await api.get(path))
        return last[-1] if predicate(last[-1]) else None

    try:
        return await until(answered, f"GET {path} as expected", within=within, interval=0.1)
    except AssertionError as e:
        msg = f"{e}; last answer: {last[-1].status} {last[-1].body[:200]!r}"
        raise AssertionError(msg) from None


def contents(ws: str, path: str) -> str:
    return f"/w/{ws}/api/contents/{path}"


async def test_files_made_in_the_terminal_reach_the_contents_api(
    make_user: Any, base_url: str
) -> None:
    ws, api, terminal = await workspace_terminal(make_user, base_url)
    await terminal.run(
        "mkdir -p out/deep && python -c \"open('out/deep/result.txt','w').write(str(6*7))\"",
        "WROTE",
    )
    made = await until_get(api, contents(ws, "out/deep/result.txt"), lambda r: r.status == 200)
    assert made.json["content"] == "42"
    folder = await api.get(contents(ws, "out"))
    assert folder.json["type"] == "directory"

    await terminal.run("mv out moved && rm moved/deep/result.txt", "MOVED")
    await until_get(api, contents(ws, "out"), lambda r: r.status == 404)
    await until_get(api, contents(ws, "moved/deep/result.txt"), lambda r: r.status == 404)
    assert (await api.get(contents(ws, "moved/deep"))).status == 200


async def test_ignored_and_too_large_files_stay_in_the_sandbox(
    make_user: Any, base_url: str
) -> None:
    ws, api, terminal = await workspace_terminal(make_user, base_url)
    await terminal.run(
        "mkdir __pycache__ && echo x > __pycache__/a.pyc && "
        "head -c 11000000 /dev/zero > big.bin && echo done > marker.txt",
        "MADE",
    )
    await until_get(api, contents(ws, "marker.txt"), lambda r: r.status == 200)
    await until_get(
        api,
        f"/api/workspaces/{ws}/sandbox",
        lambda r: [f["path"] for f in r.json["not_synced"]] == ["big.bin"],
    )
    assert (await api.get(contents(ws, "__pycache__"))).status == 404
    assert (await api.get(contents(ws, "big.bin"))).status == 404


async def test_an_older_sandbox_change_loses_to_the_stored_version(
    make_user: Any, base_url: str
) -> None:
    ws, api, terminal = await workspace_terminal(make_user, base_url)
    saved = await api.request(
        "PUT", contents(ws, "notes.txt"), {"type": "file", "format": "text", "content": "stored"}
    )
    assert saved.status == 201
    await terminal.run("echo sandbox > notes.txt; touch -d '2020-01-01' notes.txt", "OLD")
    # The sandbox gets the stored version back, and storage keeps it meanwhile.
    await terminal.run_until("cat notes.txt", "stored", within=10)
    assert (await api.get(contents(ws, "notes.txt"))).json["content"] == "stored"


async def test_stopping_flushes_the_last_changes(make_user: Any, base_url: str) -> None:
    ws, api, terminal = await workspace_terminal(make_user, base_url)
    # Stopped at once, well inside the sync's debounce: only the final flush can save it.
    await terminal.run("echo 'written right before the stop' > last.txt", "WROTE")
    assert (await api.delete(f"/api/workspaces/{ws}/sandbox")).status == 204
    stored = await api.get(contents(ws, "last.txt"))
    assert stored.status == 200
    assert stored.json["content"] == "written right before the stop\n"


async def test_a_killed_sandbox_keeps_what_was_synced(
    make_user: Any, base_url: str, jp_serverapp: PlatformApp
) -> None:
    ws, api, terminal = await workspace_terminal(make_user, base_url)
    await terminal.run("echo survived > kept.txt", "WROTE")
    await until_get(api, contents(ws, "kept.txt"), lambda r: r.status == 200)
    sandboxes = jp_serverapp.web_app.settings["sandboxes"]
    (handle,) = await sandboxes.spawner.find_running()
    os.kill(int(handle.state["pid"]), signal.SIGKILL)
    stored = await api.get(contents(ws, "kept.txt"))
    assert stored.status == 200
    assert stored.json["content"] == "survived\n"


async def test_events_tell_editors_about_both_sides(make_user: Any, base_url: str) -> None:
    _, ws, token = await workspace_with_token(make_user)
    api = Client(base_url, token=token)
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/api/events?token={token}"
    events = await websocket_connect(url)
    OPENED.append(events)

    async def next_event(predicate: Any) -> dict[str, Any]:
        while True:
            raw = await asyncio.wait_for(events.read_message(), 20)
            assert raw is not None
            event: dict[str, Any] = json.loads(raw)
            if predicate(event):
                return event

    first = await next_event(lambda e: True)
    assert first["type"] == "sandbox"
    assert first["state"] == "stopped"

    await api.request(
        "PUT", contents(ws, "api.txt"), {"type": "file", "format": "text", "content": "a"}
    )
    saved = await next_event(lambda e: e.get("path") == "api.txt")
    assert saved["type"] == "modified"
    stored = (await api.get(contents(ws, "api.txt") + "?content=0")).json
    assert saved["last_modified"] == stored["last_modified"]

    # Every API change is published with its commit, and a refused one not at all.
    def file_event(event: dict[str, Any]) -> bool:
        return bool(event["type"] != "sandbox")

    stale = {"If-Match": '"' + "0" * 64 + '"'}
    body = {"type": "file", "format": "text", "content": "refused"}
    refused = await api.request("PUT", contents(ws, "api.txt"), body, headers=stale)
    assert refused.status == 409
    await api.request("PATCH", contents(ws, "api.txt"), {"path": "renamed.txt"})
    moved = await next_event(file_event)
    assert (moved["type"], moved["path"], moved["old_path"]) == ("moved", "renamed.txt", "api.txt")
    assert moved["last_modified"] == stored["last_modified"]
    await api.request("POST", contents(ws, ""), {"copy_from": "renamed.txt"})
    copied = await next_event(file_event)
    assert (copied["type"], copied["path"]) == ("created", "renamed-Copy1.txt")
    await api.request("DELETE", contents(ws, "renamed-Copy1.txt"))
    assert await next_event(file_event) == {"type": "deleted", "path": "renamed-Copy1.txt"}
    checkpoint = (await api.request("POST", contents(ws, "renamed.txt") + "/checkpoints")).json
    restore = contents(ws, "renamed.txt") + f"/checkpoints/{checkpoint['id']}"
    assert (await api.request("POST", restore)).status == 204
    restored = await next_event(file_event)
    assert (restored["type"], restored["path"]) == ("modified", "renamed.txt")

    _, terminal = await open_terminal(base_url, ws, token)
    running = await next_event(lambda e: e["type"] == "sandbox" and e["state"] == "running")
    assert running["progress"] == 100
    await terminal.run("echo b > from-terminal.txt", "WROTE")
    made = await next_event(lambda e: e.get("path") == "from-terminal.txt")
    assert made["type"] == "created"


async def test_events_of_another_users_workspace_are_404(
    make_user: Any, make_token_client: Any, base_url: str
) -> None:
    _, ws, _ = await workspace_with_token(make_user)
    mallory = await make_token_client("mallory")
    url = base_url.replace("http", "ws", 1) + f"/w/{ws}/api/events?token={mallory.token}"
    with pytest.raises(Exception, match="404"):
        await websocket_connect(url)
