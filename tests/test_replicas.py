"""Two platform replicas on one PostgreSQL behave as one (design invariant 4)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tornado.websocket import websocket_connect

from extensions.sandboxes.spawners.local import LocalSpawner
from tests.client import Client
from tests.test_restart import Platform, data_dir, read_until  # noqa: F401  (fixture)
from tests.waiting import until

pytestmark = pytest.mark.slow


async def test_two_replicas_serve_every_request_and_survive_each_other(
    database_url: str,
    data_dir: Path,  # noqa: F811
) -> None:
    a, b = Platform(database_url, data_dir), Platform(database_url, data_dir)
    await asyncio.gather(a.start(), b.start())

    browser, on_a = await a.sign_up()
    token = on_a.token
    on_b = Client(b.url, token=token)

    # A cookie signed by one replica is good on the other (the secret is in PostgreSQL).
    assert (
        await Client(b.url, cookies=dict(browser.cookies)).get("/api/accounts/me")
    ).status == 200

    ws = (await on_b.post("/api/workspaces", {"name": "shared"})).json["uuid"]
    events = await websocket_connect(
        b.url.replace("http", "ws", 1) + f"/w/{ws}/api/events?token={token}"
    )
    assert json.loads(await events.read_message())["type"] == "sandbox"
    saved = await on_a.request(
        "PUT",
        f"/w/{ws}/api/contents/a.txt",
        {"type": "file", "format": "text", "content": "saved through A"},
    )
    assert saved.status == 201
    heard = json.loads(await asyncio.wait_for(events.read_message(), 20))
    assert (heard["type"], heard["path"]) == ("modified", "a.txt")
    events.close()
    assert (await on_b.get(f"/w/{ws}/api/contents/a.txt")).json["content"] == "saved through A"

    # Two replicas asked for the same sandbox at once start one.
    results = await asyncio.gather(
        on_a.post(f"/api/workspaces/{ws}/sandbox"), on_b.post(f"/api/workspaces/{ws}/sandbox")
    )
    assert [r.status for r in results] == [200, 200]
    spawner = LocalSpawner(data_dir=str(data_dir))
    assert len(await spawner.find_running()) == 1

    assert (await on_a.post(f"/w/{ws}/api/terminals")).json["name"] == "1"
    path = f"/w/{ws}/terminals/websocket/1?token={token}"
    terminal = await websocket_connect(a.url.replace("http", "ws", 1) + path)
    await terminal.write_message(json.dumps(["stdin", "echo from-a-$((1+1)) > a2.txt\r"]))
    await terminal.write_message(json.dumps(["stdin", "cat a2.txt\r"]))
    await read_until(terminal, "from-a-2")
    terminal.close()

    # A dies: B serves the same terminal (with its scrollback) and takes file sync over.
    a.kill()
    terminal = await websocket_connect(b.url.replace("http", "ws", 1) + path)
    await read_until(terminal, "from-a-2")
    await terminal.write_message(json.dumps(["stdin", "echo from-b > b.txt\r"]))

    async def synced() -> bool:
        response = await on_b.get(f"/w/{ws}/api/contents/b.txt")
        return response.status == 200 and response.json["content"] == "from-b\n"

    await until(synced, "B never took the sync over from the killed A", within=20)
    terminal.close()

    # Rolling restart: A comes back, B goes; nothing is lost, the sandbox runs on.
    await a.start()
    b.kill()
    assert (await on_a.get(f"/w/{ws}/api/contents/a2.txt")).json["content"] == "from-a-2\n"
    assert len(await spawner.find_running()) == 1
    terminal = await websocket_connect(a.url.replace("http", "ws", 1) + path)
    await read_until(terminal, "from-a-2")
    terminal.close()
    a.kill()
