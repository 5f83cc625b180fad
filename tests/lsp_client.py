"""A language server client for tests: JSON-RPC over a WebSocket, one message per frame."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.netutil import Resolver
from tornado.websocket import WebSocketClientConnection, websocket_connect

PATIENCE = 60.0
"""Seconds a test waits for one message before it fails (a first completion imports a lot)."""
WORKSPACE_URI = "file:///workspace"
"""The sandbox's root, as the IDE names its files."""


@dataclass(eq=False)
class LspClient:
    """Sends requests and notifications; keeps what the server sent that nobody read yet."""

    conn: WebSocketClientConnection
    root_uri: str = WORKSPACE_URI
    notifications: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    server_requests: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 0

    @classmethod
    async def connect(
        cls, request: HTTPRequest, resolver: Resolver | None = None, root_uri: str = WORKSPACE_URI
    ) -> LspClient:
        """Open the socket (``HTTPClientError`` if the upgrade is refused)."""
        return cls(await websocket_connect(request, resolver=resolver), root_uri)

    def uri(self, path: str) -> str:
        """A workspace file's URI."""
        return f"{self.root_uri}/{path}"

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message as it is."""
        await self.conn.write_message(json.dumps({"jsonrpc": "2.0", **message}))

    async def notify(self, method: str, params: Any) -> None:
        """Send a notification."""
        await self.send({"method": method, "params": params})

    async def request(self, method: str, params: Any, request_id: Any = None) -> dict[str, Any]:
        """Send a request and return its reply (the whole message)."""
        if request_id is None:
            self.next_id += 1
            request_id = self.next_id
        await self.send({"id": request_id, "method": method, "params": params})
        return await self.reply(request_id)

    async def reply(self, request_id: Any) -> dict[str, Any]:
        """The reply to ``request_id``, read from the socket if it has not come yet."""
        key = json.dumps(request_id)
        while key not in self.replies:
            await self._read_one()
        return self.replies.pop(key)

    async def notification(
        self, method: str, matches: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> dict[str, Any]:
        """The first notification ``method`` whose params ``matches`` (taken off the list)."""
        while True:
            for note in self.notifications:
                if note["method"] == method and matches(note.get("params")):
                    self.notifications.remove(note)
                    return note
            await self._read_one()

    async def closed(self) -> tuple[int | None, str | None]:
        """Read until the server closes the socket; its close code and reason."""
        while await asyncio.wait_for(self.conn.read_message(), PATIENCE) is not None:
            pass
        return self.conn.close_code, self.conn.close_reason

    async def initialize(self) -> dict[str, Any]:
        """``initialize`` as monaco-editor's client sends it (no root), then ``initialized``."""
        reply = await self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": None,
                "capabilities": {
                    "textDocument": {
                        "completion": {
                            "completionItem": {"documentationFormat": ["markdown", "plaintext"]}
                        },
                        "hover": {"contentFormat": ["markdown", "plaintext"]},
                    }
                },
            },
        )
        await self.notify("initialized", {})
        return reply

    async def open(self, path: str, text: str, language: str = "python") -> None:
        """``didOpen`` a workspace file."""
        document = {"uri": self.uri(path), "languageId": language, "version": 1, "text": text}
        await self.notify("textDocument/didOpen", {"textDocument": document})

    async def _read_one(self) -> None:
        raw = await asyncio.wait_for(self.conn.read_message(), PATIENCE)
        if raw is None:
            msg = f"closed: {self.conn.close_code} {self.conn.close_reason}"
            raise ConnectionError(msg)
        assert isinstance(raw, str), "a binary frame"
        message = json.loads(raw)
        if "method" not in message:
            self.replies[json.dumps(message.get("id"))] = message
        elif "id" in message:
            self.server_requests.append(message)
        else:
            self.notifications.append(message)

    def close(self) -> None:
        """Close the socket."""
        self.conn.close()


def position(text: str, needle: str, offset: int = 0) -> dict[str, int]:
    """The LSP position of ``needle`` in ``text`` (plus ``offset`` characters)."""
    before = text[: text.index(needle) + offset]
    return {"line": before.count("\n"), "character": len(before.rsplit("\n", 1)[-1])}


def diagnostic_codes(note: dict[str, Any]) -> set[str]:
    """The codes of a ``publishDiagnostics`` notification."""
    return {str(d.get("code")) for d in note["params"]["diagnostics"]}
