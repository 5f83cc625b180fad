"""Co-editing: remote keystroke latency (one person's key to the others' documents) with 2 and
10 people in one file, and the memory of each open shared document.

Baseline: a plain pycrdt-websocket server (its ``WebsocketServer`` behind a Tornado WebSocket,
as jupyter-collaboration serves it) with no authentication, no storage and no saves, run in
its own process like the platform. Both speak the same protocol to the same clients, so the
ratio is what the platform adds for a keystroke: the login and workspace checks at connect,
the frame checks, storing each update in PostgreSQL (and its NOTIFY to other replicas), and
the debounced saves.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pycrdt import (
    Doc,
    TextEvent,
    YMessageType,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from benchmarks.common import (
    HTTP,
    Result,
    embedded_postgres,
    free_port,
    p50,
    p99,
    platform,
    report,
    rss_kib,
    server,
    temp_dir,
)
from benchmarks.contents import login_token
from extensions.collaboration.merge import text_of

KEYSTROKES = 150
"""Keystrokes timed for each room size."""
ROOM_SIZES = (2, 10)
DOCUMENTS = 40
"""Documents opened (one client each) to measure the memory of one."""
DOCUMENT_TEXT = "".join(f"line {i}: some code of the file\n" for i in range(300))
PATIENCE = 60.0
"""Seconds to wait for a keystroke to arrive before the run fails."""

Connect = Callable[[str], Awaitable["Peer"]]


class Peer:
    """One person's y-websocket client: a pycrdt document that notes when each marker typed
    by someone else arrives."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.doc: Doc[Any] = Doc()
        self.text = text_of(self.doc)
        self.synced = asyncio.Event()
        self.arrived: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Event] = {}
        self._remote = False
        self.doc.observe(self._local)
        self.text.observe(self._changed)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, headers: dict[str, str]) -> Peer:
        peer = cls(await websocket_connect(HTTPRequest(url, headers=headers)))
        await peer.conn.write_message(create_sync_message(peer.doc), binary=True)
        await asyncio.wait_for(peer.synced.wait(), PATIENCE)
        return peer

    def _local(self, event: Any) -> None:
        if not self._remote:
            self.conn.write_message(create_update_message(event.update), binary=True)

    def _changed(self, event: TextEvent) -> None:
        now = time.perf_counter()
        for change in event.delta:
            inserted = change.get("insert")
            if isinstance(inserted, str) and inserted in self.waiting:
                self.arrived[inserted] = now
                self.waiting.pop(inserted).set()

    async def _read(self) -> None:
        while (message := await self.conn.read_message()) is not None:
            if not isinstance(message, bytes) or message[0] != YMessageType.SYNC:
                continue
            self._remote = True
            try:
                reply = handle_sync_message(message[1:], self.doc)
            finally:
                self._remote = False
            if reply is not None:
                await self.conn.write_message(reply, binary=True)
            if message[1] == 1:
                self.synced.set()

    def expect(self, marker: str) -> asyncio.Event:
        event = asyncio.Event()
        self.waiting[marker] = event
        return event

    def close(self) -> None:
        self.conn.close()


async def keystroke_latency(connect: Connect, people: int) -> list[float]:
    """Milliseconds from one person's keystroke to each other person's document."""
    peers = [await connect(f"room-{people}.txt") for _ in range(people)]
    writer, readers = peers[0], peers[1:]
    samples = []
    for i in range(KEYSTROKES):
        marker = f"k{i};"
        arrivals = [reader.expect(marker) for reader in readers]
        typed = time.perf_counter()
        writer.text.insert(0, marker)
        await asyncio.wait_for(asyncio.gather(*(a.wait() for a in arrivals)), PATIENCE)
        samples += [(reader.arrived[marker] - typed) * 1000 for reader in readers]
    for peer in peers:
        peer.close()
    return samples


async def memory_per_document(connect: Connect, pid: int) -> float:
    """KiB of the server's resident memory per open document (one client in each)."""
    warm = await connect("warm-up.txt")  # the first room pays for imports
    await asyncio.sleep(1)
    before = rss_kib([pid])
    peers = [await connect(f"doc-{i}.txt") for i in range(DOCUMENTS)]
    await asyncio.sleep(2)  # let the servers settle (saves, stored updates)
    after = rss_kib([pid])
    for peer in [warm, *peers]:
        peer.close()
    return (after - before) / DOCUMENTS


async def measure_platform(tmp: Path) -> dict[str, Any]:
    with embedded_postgres(tmp / "pg") as conninfo:
        async with platform(tmp / "data", conninfo) as (process, port):
            user = {"username": "bench", "password": secrets.token_hex(12)}
            HTTP(port, {}).json("POST", "/api/accounts/register", user, expect=201)
            token = login_token(port, user)
            api = HTTP(port, {"Authorization": f"token {token}"})
            ws = api.json("POST", "/api/workspaces", {"name": "bench"}, expect=201)["uuid"]
            names = [f"room-{n}.txt" for n in ROOM_SIZES]
            names += ["warm-up.txt", *(f"doc-{i}.txt" for i in range(DOCUMENTS))]
            for name in names:
                model = {"type": "file", "format": "text", "content": DOCUMENT_TEXT}
                api.json("PUT", f"/w/{ws}/api/contents/{name}", model, expect=None)

            async def connect(path: str) -> Peer:
                url = f"ws://127.0.0.1:{port}/w/{ws}/api/collaboration/text/{path}"
                return await Peer.connect(url, {"Authorization": f"token {token}"})

            return {
                "latency": {n: await keystroke_latency(connect, n) for n in ROOM_SIZES},
                "memory": await memory_per_document(connect, process.pid),
            }


async def measure_baseline() -> dict[str, Any]:
    port = free_port()
    with server(["benchmarks.collaboration", "serve-baseline", str(port)], port, "/") as process:

        async def connect(path: str) -> Peer:
            return await Peer.connect(f"ws://127.0.0.1:{port}/{path}", {})

        return {
            "latency": {n: await keystroke_latency(connect, n) for n in ROOM_SIZES},
            "memory": await memory_per_document(connect, process.pid),
        }


def serve_baseline(port: int) -> None:
    """The baseline server: pycrdt-websocket's rooms behind Tornado, nothing else. Each room
    starts with the file's text, as the platform's do."""
    from pycrdt.websocket import WebsocketServer, YRoom
    from tornado.web import Application, RequestHandler
    from tornado.websocket import WebSocketHandler

    from extensions.collaboration.handlers import SocketChannel
    from extensions.collaboration.merge import seed

    class Rooms(WebsocketServer):
        async def get_room(self, name: str) -> YRoom:
            if name not in self.rooms:
                room = YRoom(log=self.log)
                room.ydoc.apply_update(seed(DOCUMENT_TEXT))
                self.rooms[name] = room
            return await super().get_room(name)

    rooms = Rooms(auto_clean_rooms=False)

    class Socket(WebSocketHandler):
        def open(self, path: str) -> None:  # type: ignore[override]
            self.channel = SocketChannel(self, path)
            asyncio.get_running_loop().create_task(rooms.serve(self.channel))

        def on_message(self, message: str | bytes) -> None:
            if isinstance(message, bytes):
                self.channel.put(message)

        def on_close(self) -> None:
            self.channel.put(None)

    class Ready(RequestHandler):
        def get(self) -> None:
            self.finish("ok")

    async def run() -> None:
        async with rooms:
            Application([(r"/", Ready), (r"/(.+)", Socket)]).listen(port, "127.0.0.1")
            await asyncio.Event().wait()

    asyncio.run(run())


def results(ours: dict[str, Any], baseline: dict[str, Any]) -> list[Result]:
    found = []
    for n in ROOM_SIZES:
        a, b = ours["latency"][n], baseline["latency"][n]
        found += [
            Result(f"collaboration.keystroke_{n}_people.p50", "ms", p50(a), p50(b)),
            Result(f"collaboration.keystroke_{n}_people.p99", "ms", p99(a), p99(b)),
            Result(
                f"collaboration.keystroke_{n}_people.mean",
                "ms",
                statistics.mean(a),
                statistics.mean(b),
            ),
        ]
    found.append(
        Result("collaboration.memory_per_document", "KiB", ours["memory"], baseline["memory"])
    )
    return found


async def main_async() -> list[Result]:
    """Measure ours and the baseline in the same run."""
    baseline = await measure_baseline()
    with temp_dir() as tmp:
        ours = await measure_platform(tmp)
    return results(ours, baseline)


def main() -> None:
    """Run, print the table, update results.json (or serve the baseline: ``serve-baseline
    <port>``)."""
    if sys.argv[1:2] == ["serve-baseline"]:
        serve_baseline(int(sys.argv[2]))
        return
    report(asyncio.run(main_async()))


if __name__ == "__main__":
    main()
