"""A language server client for the benchmarks, over either of the ways to reach pylsp: the
platform's WebSocket bridge (one JSON-RPC message per frame) or the server's own stdin and
stdout (``Content-Length`` framing), so both are timed with the same code."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Protocol

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from kernel_image.lsp_process import encode, read_message
from kernel_image.lsp_specs import ServerSpec, default_specs

SANDBOX_PYTHON = Path(__file__).parent.parent / ".sandbox-venv" / "bin" / "python"
"""The interpreter sandboxes run, pylsp and jedi included."""
MAX_MESSAGE_BYTES = 64 * 1024**2
"""The largest message read from a server on stdio."""
PATIENCE = 120.0
"""Seconds to wait for one message before the run fails."""
CAPABILITIES = {
    "textDocument": {
        "completion": {"completionItem": {"documentationFormat": ["markdown", "plaintext"]}},
        "hover": {"contentFormat": ["markdown", "plaintext"]},
    }
}
"""What monaco-editor's client announces for completion and hover."""


class Transport(Protocol):
    """Moves whole JSON-RPC messages to and from a server."""

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message."""

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None (or an error saying why) once the server has gone."""

    async def close(self) -> None:
        """Let the server go."""


class WebSocketTransport:
    """The platform's bridge: ``WS /w/<uuid>/lsp/ws/<name>``."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, port: int, workspace: str, token: str) -> WebSocketTransport:
        """Open a workspace's pylsp socket with an API token."""
        url = f"ws://127.0.0.1:{port}/w/{workspace}/lsp/ws/pylsp"
        request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
        return cls(await websocket_connect(request))

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.write_message(json.dumps(message))

    async def receive(self) -> dict[str, Any] | None:
        raw = await self.conn.read_message()
        if raw is None:
            # Why matters here: the agent restarts a server past its memory limit (1012).
            msg = f"the socket closed: {self.conn.close_code} {self.conn.close_reason}"
            raise RuntimeError(msg)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def close(self) -> None:
        """Close the socket (the agent stops the server after its idle time)."""
        self.conn.close()


class StdioTransport:
    """pylsp started on this host with the sandbox's settings, without a sandbox, the bridge or
    the sandbox's shared jedi cache."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, root: Path, cache: Path) -> StdioTransport:
        """Start the sandbox venv's pylsp in ``root`` as pylsp starts alone (without the
        sandbox's shared jedi cache or completion details), jedi's cache in ``cache``."""
        argv = [str(SANDBOX_PYTHON), "-P", "-m", "pylsp"]
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=root,
            env={**env, "XDG_CACHE_HOME": str(cache)},
        )
        return cls(process)

    async def send(self, message: dict[str, Any]) -> None:
        stdin = self.process.stdin
        assert stdin is not None  # noqa: S101  (a pipe)
        stdin.write(encode(message))
        await stdin.drain()

    async def receive(self) -> dict[str, Any] | None:
        stdout = self.process.stdout
        assert stdout is not None  # noqa: S101  (a pipe)
        return await read_message(stdout, MAX_MESSAGE_BYTES)

    async def close(self) -> None:
        """End the server and what it started (jedi's subprocess ends with its stdin)."""
        self.process.terminate()
        await self.process.wait()


def pylsp_spec() -> ServerSpec:
    """How the agent runs pylsp, and its settings."""
    return default_specs()["pylsp"]


class LspClient:
    """Requests and notifications over a transport; answers what the server asks the way the
    bridge does (its settings for ``workspace/configuration``), and drops notifications."""

    def __init__(self, transport: Transport, root_uri: str) -> None:
        self.transport = transport
        self.root_uri = root_uri
        self.next_id = 0
        self.versions: dict[str, int] = {}

    def uri(self, path: str) -> str:
        """A workspace file's URI."""
        return f"{self.root_uri}/{path}"

    async def notify(self, method: str, params: Any) -> None:
        """Send a notification."""
        await self.transport.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def request(self, method: str, params: Any) -> Any:
        """Send a request and return its result (an error reply fails the run)."""
        self.next_id += 1
        request_id = self.next_id
        await self.transport.send(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        )
        while True:
            message = await asyncio.wait_for(self.transport.receive(), PATIENCE)
            if message is None:
                msg = f"the server went away during {method}"
                raise RuntimeError(msg)
            if "method" in message and "id" in message:
                await self._answer(message)
            elif "method" not in message and message.get("id") == request_id:
                if "error" in message:
                    msg = f"{method}: {message['error']}"
                    raise RuntimeError(msg)
                return message.get("result")

    async def initialize(self) -> None:
        """``initialize`` with the agent's settings (the bridge sets them anyway), then
        ``initialized``."""
        settings = pylsp_spec().settings
        params = {
            "processId": None,
            "rootUri": self.root_uri,
            "capabilities": CAPABILITIES,
            "initializationOptions": settings,
        }
        await self.request("initialize", params)
        await self.notify("initialized", {})

    async def edit(self, path: str, text: str) -> None:
        """``didOpen`` the file the first time, ``didChange`` (whole text) after."""
        uri = self.uri(path)
        version = self.versions.get(uri, 0) + 1
        self.versions[uri] = version
        if version == 1:
            document = {"uri": uri, "languageId": "python", "version": 1, "text": text}
            await self.notify("textDocument/didOpen", {"textDocument": document})
        else:
            await self.notify(
                "textDocument/didChange",
                {
                    "textDocument": {"uri": uri, "version": version},
                    "contentChanges": [{"text": text}],
                },
            )

    async def complete_at_end(self, path: str, text: str) -> list[str]:
        """The labels completion offers at the end of ``text`` (the file's current text)."""
        result = await self.request("textDocument/completion", at(self.uri(path), text, len(text)))
        items = result["items"] if isinstance(result, dict) else result or []
        return [str(item["label"]) for item in items]

    async def hover(self, path: str, text: str, needle: str) -> Any:
        """The hover on the first ``needle`` in ``text``."""
        return await self.request(
            "textDocument/hover", at(self.uri(path), text, text.index(needle))
        )

    async def _answer(self, message: dict[str, Any]) -> None:
        result: Any = None
        if message["method"] == "workspace/configuration":
            settings = pylsp_spec().settings
            result = [settings.get(item.get("section")) for item in message["params"]["items"]]
        await self.transport.send({"jsonrpc": "2.0", "id": message["id"], "result": result})


def at(uri: str, text: str, offset: int) -> dict[str, Any]:
    """``textDocument`` and ``position`` params for character ``offset`` of ``text``."""
    before = text[:offset]
    line = before.count("\n")
    character = len(before.rsplit("\n", 1)[-1])
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
