"""The agent's file sync channel (``WS /api/sync``): what a program writes reaches the platform."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.test_agent import TOKEN, Agent, agent, agent_args  # noqa: F401  (fixtures)


class SyncClient:
    """The platform's side of the channel, as a test sees it."""

    def __init__(self, connection: WebSocketClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, running: Agent) -> SyncClient:
        request = HTTPRequest(
            f"ws://{running.host}/api/sync", headers={"Authorization": f"token {TOKEN}"}
        )
        return cls(await websocket_connect(request, max_message_size=1 << 25))

    async def next(self, within: float = 5) -> dict[str, Any]:
        message = await asyncio.wait_for(self.connection.read_message(), within)
        assert message is not None, "the agent closed the sync channel"
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    async def until(self, predicate: Any, within: float = 5) -> list[dict[str, Any]]:
        """Messages up to and including the first that matches ``predicate``."""
        seen = []
        while True:
            message = await self.next(within)
            seen.append(message)
            if predicate(message):
                return seen

    async def ack(self, seq: int) -> None:
        await self.connection.write_message(json.dumps({"ack": seq}))

    async def flush(self, flush_id: str) -> list[dict[str, Any]]:
        await self.connection.write_message(json.dumps({"flush": flush_id}))
        return await self.until(lambda m: m.get("type") == "flushed" and m["id"] == flush_id)


async def test_written_files_folders_and_deletions_are_sent(agent: Agent) -> None:  # noqa: F811
    sync = await SyncClient.open(agent)
    (agent.root / "src").mkdir()
    (agent.root / "src" / "app.py").write_bytes(b"print('hi')\n")
    seen = await sync.until(lambda m: m.get("path") == "src/app.py")
    by_path = {m["path"]: m for m in seen if "path" in m}
    assert by_path["src"]["type"] == "directory"
    made = by_path["src/app.py"]
    assert made["type"] == "file"
    assert base64.b64decode(made["content"]) == b"print('hi')\n"
    assert made["size"] == 12
    assert made["seq"] > by_path["src"]["seq"]

    (agent.root / "src" / "app.py").unlink()
    gone = await sync.until(lambda m: m.get("path") == "src/app.py")
    assert gone[-1]["type"] == "deleted"
    sync.connection.close()


async def test_ignored_large_and_agent_written_files(agent: Agent) -> None:  # noqa: F811
    sync = await SyncClient.open(agent)
    (agent.root / "__pycache__").mkdir()
    (agent.root / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (agent.root / "lib.pyc").write_bytes(b"\0")
    (agent.root / "big.bin").write_bytes(os.urandom(11 * 1024 * 1024))
    put = await agent.fetch("PUT", "/api/files/from-platform.txt", b"sent by the platform")
    assert put.code == 204
    (agent.root / "marker.txt").write_text("done")
    seen = await sync.until(lambda m: m.get("path") == "marker.txt")
    paths = {m["path"]: m for m in seen if "path" in m}
    assert "__pycache__" not in paths
    assert not any(p.endswith(".pyc") for p in paths)
    assert paths["big.bin"]["type"] == "too_large"
    assert paths["big.bin"]["size"] == 11 * 1024 * 1024
    assert "content" not in paths["big.bin"]
    assert "from-platform.txt" not in paths
    sync.connection.close()


async def test_moves_keep_order_and_unacknowledged_changes_are_resent(
    agent: Agent,  # noqa: F811
) -> None:
    sync = await SyncClient.open(agent)
    (agent.root / "a.txt").write_text("one")
    first = await sync.until(lambda m: m.get("path") == "a.txt")
    await sync.ack(first[-1]["seq"])
    (agent.root / "a.txt").rename(agent.root / "b.txt")
    moved = await sync.until(lambda m: m.get("type") == "moved")
    assert (moved[-1]["from"], moved[-1]["to"]) == ("a.txt", "b.txt")
    sync.connection.close()

    # Nothing after the move was acknowledged: a new connection gets the state again.
    again = await SyncClient.open(agent)
    resent = await again.until(lambda m: m.get("path") == "b.txt")
    assert resent[-1]["type"] == "file"
    assert base64.b64decode(resent[-1]["content"]) == b"one"
    again.connection.close()


async def test_flush_sends_everything_written_before_it(agent: Agent) -> None:  # noqa: F811
    sync = await SyncClient.open(agent)
    (agent.root / "last-second.txt").write_text("written just before a stop")
    seen = await sync.flush("before-stop")
    assert any(m.get("path") == "last-second.txt" for m in seen)
    assert seen[-1]["type"] == "flushed"
    sync.connection.close()


async def test_a_new_connection_replaces_the_old(agent: Agent) -> None:  # noqa: F811
    first = await SyncClient.open(agent)
    second = await SyncClient.open(agent)
    assert await asyncio.wait_for(first.connection.read_message(), 5) is None
    assert first.connection.close_code == 4000
    first.connection.close()
    (agent.root / "after.txt").write_text("x")
    await second.until(lambda m: m.get("path") == "after.txt")
    second.connection.close()
