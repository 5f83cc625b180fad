"""One language server shared by every client of the sandbox: ids remapped so that each reply
reaches only the client that asked, ``initialize`` sent once, documents counted per client.

What the bridge does to each kind of message is the contract of docs/agent-protocol.md
("Language servers"); the comments here say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict

from kernel_image.lsp_process import LanguageServerProcess, ServerOutputError
from kernel_image.lsp_specs import ServerSpec
from kernel_image.timefmt import isoformat

log = logging.getLogger(__name__)

RESTARTED_CLOSE = 1012
"""The close code of every client socket when its server exits or is killed ("service
restart"): reconnect, send ``initialize`` and reopen the documents."""
GOING_AWAY = 1001
SERVER_ERROR = 1011
METHOD_NOT_FOUND = -32601
FORWARDED_SERVER_REQUESTS = frozenset({"workspace/applyEdit"})
"""Requests from the server that one client answers (the one whose request is in flight)."""


@dataclass(frozen=True)
class LanguageServerLimits:
    """What the command line decided (``--lsp-idle-timeout``, ``--lsp-memory-limit``)."""

    idle_timeout: float = 600.0
    """Seconds a server lives on without any client socket; 0: until the agent stops."""
    memory_limit: int = 400 * 1024**2
    """Bytes of resident memory the server and its subprocesses may use together before they
    are killed (the sandbox is not); 0: no limit."""
    memory_check_interval: float = 2.0
    """Seconds between two measurements of that memory."""
    max_message_bytes: int = 16 * 1024**2
    """The largest message either side may send (a whole document travels in one)."""


class SessionModel(TypedDict):
    """A server as ``GET /lsp/status`` shows it (jupyter-lsp's session shape, without spec)."""

    handler_count: int
    status: str
    last_server_message_at: str | None
    last_handler_message_at: str | None


class BadMessageError(Exception):
    """A client message the bridge cannot handle; the text is the socket's close reason."""


class LanguageClient(Protocol):
    """What the bridge needs from a connected client (the WebSocket handler)."""

    def send_message(self, message: dict[str, Any]) -> None:
        """Send one JSON-RPC message to the client."""

    def disconnect(self, code: int, reason: str) -> None:
        """Close the client's socket (it does not call ``detach`` back)."""


def id_key(request_id: Any) -> str:
    """A dictionary key for a JSON-RPC id that keeps ``1`` and ``"1"`` apart."""
    return json.dumps(request_id)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        msg = f"{what} must be an object"
        raise BadMessageError(msg)
    return value


def _document_uri(params: Any, method: str) -> str:
    document = _object(_object(params, f"{method} params").get("textDocument"), "textDocument")
    uri = document.get("uri")
    if not isinstance(uri, str):
        msg = f"{method}: textDocument.uri must be a string"
        raise BadMessageError(msg)
    return uri


class LanguageServer:
    """One server (by name): its process, its clients, and the bridge between them.

    The process starts with the first client; it is stopped ``idle_timeout`` seconds after the
    last one left. If it exits, or is killed for using more than ``memory_limit``, every client
    is disconnected with ``RESTARTED_CLOSE`` and the next client starts a new one.
    """

    def __init__(self, name: str, spec: ServerSpec, root: str, limits: LanguageServerLimits):
        self.name = name
        self.spec = spec
        self.root = root
        self.limits = limits
        self.clients: list[LanguageClient] = []
        self.status = "not_started"
        self.last_server_message_at: float | None = None
        self.last_handler_message_at: float | None = None
        self._process: LanguageServerProcess | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: asyncio.TimerHandle | None = None
        self._starting = asyncio.Lock()
        self._reset()

    def _reset(self) -> None:
        """Forget everything about a process (it ended)."""
        self._next_id = 0
        # server id -> (client, the client's id); client None: the bridge's own request.
        self._pending: dict[int, tuple[LanguageClient | None, Any]] = {}
        self._server_requests: dict[str, LanguageClient] = {}
        self._documents: dict[str, list[LanguageClient]] = {}
        self._initialize_result: dict[str, Any] | None = None
        self._initialize_waiters: list[tuple[LanguageClient, Any]] | None = None
        self._initialized_sent = False

    def model(self) -> SessionModel:
        """The status of this server."""
        return {
            "handler_count": len(self.clients),
            "status": self.status,
            "last_server_message_at": _iso(self.last_server_message_at),
            "last_handler_message_at": _iso(self.last_handler_message_at),
        }

    # -- clients ------------------------------------------------------------------------------

    async def attach(self, client: LanguageClient) -> None:
        """Add a client; start the server first if none runs."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        async with self._starting:
            if self._process is None:
                await self._start()
        self.clients.append(client)

    def detach(self, client: LanguageClient) -> None:
        """Remove a client that went away: close its documents, cancel its requests."""
        if client not in self.clients:
            return
        self.clients.remove(client)
        for uri, holders in list(self._documents.items()):
            if client in holders:
                holders.remove(client)
                if not holders:
                    del self._documents[uri]
                    self._to_server(
                        _notification("textDocument/didClose", {"textDocument": {"uri": uri}})
                    )
        for server_id, (owner, _) in list(self._pending.items()):
            if owner is client:
                del self._pending[server_id]
                self._to_server(_notification("$/cancelRequest", {"id": server_id}))
        for key, owner in list(self._server_requests.items()):
            if owner is client:
                del self._server_requests[key]
                reply = {"applied": False, "failureReason": "the client disconnected"}
                self._to_server({"jsonrpc": "2.0", "id": json.loads(key), "result": reply})
        if self._initialize_waiters is not None:
            self._initialize_waiters = [w for w in self._initialize_waiters if w[0] is not client]
        if not self.clients and self._process is not None and self.limits.idle_timeout > 0:
            self._idle = asyncio.get_running_loop().call_later(
                self.limits.idle_timeout, self._stop_if_idle
            )

    async def from_client(self, client: LanguageClient, message: dict[str, Any]) -> None:
        """Handle one message of a client (already checked to be JSON-RPC 2.0); raise
        ``BadMessageError`` for one the bridge cannot make sense of."""
        self.last_handler_message_at = time.time()
        method = message.get("method")
        if method is None:
            self._client_response(client, message)
        elif "id" in message:
            await self._client_request(client, method, message)
        else:
            await self._client_notification(client, method, message)

    # -- client to server ---------------------------------------------------------------------

    async def _client_request(
        self, client: LanguageClient, method: str, message: dict[str, Any]
    ) -> None:
        request_id = message["id"]
        if method == "initialize":
            await self._initialize(client, request_id, message.get("params"))
        elif method == "shutdown":
            # The server is shared: one client leaving must not stop it for the others.
            client.send_message({"jsonrpc": "2.0", "id": request_id, "result": None})
        else:
            server_id = self._new_id(client, request_id)
            await self._send({**message, "id": server_id})

    async def _client_notification(
        self, client: LanguageClient, method: str, message: dict[str, Any]
    ) -> None:
        params = message.get("params")
        if method == "initialized":
            if self._initialized_sent:
                return
            self._initialized_sent = True
        elif method in {"exit", "workspace/didChangeConfiguration"}:
            # exit: the server is shared. Configuration: the bridge configures the server for
            # every client (PYLSP_SETTINGS); ruff reads the workspace's own pyproject.toml.
            return
        elif method == "$/cancelRequest":
            cancel = _object(params, "$/cancelRequest params")
            server_id = self._server_id(client, cancel.get("id"))
            if server_id is None:
                return
            message = {**message, "params": {**cancel, "id": server_id}}
        elif method == "textDocument/didOpen":
            opened = self._open(client, params)
            if opened is None:
                return
            message = opened
        elif method in {"textDocument/didChange", "textDocument/didSave", "textDocument/willSave"}:
            if client not in self._documents.get(_document_uri(params, method), []):
                return  # a document the server was not given (not Python, or not opened)
        elif method == "textDocument/didClose":
            uri = _document_uri(params, method)
            holders = self._documents.get(uri, [])
            if client not in holders:
                return
            holders.remove(client)
            if holders:
                return
            del self._documents[uri]
        await self._send(message)

    def _open(self, client: LanguageClient, params: Any) -> dict[str, Any] | None:
        """What a ``didOpen`` becomes: itself, a full-text ``didChange`` when the document is
        open already (another client's), or None (not a language of this server)."""
        document = _object(_object(params, "didOpen params").get("textDocument"), "textDocument")
        uri, language, text = document.get("uri"), document.get("languageId"), document.get("text")
        if not (isinstance(uri, str) and isinstance(language, str) and isinstance(text, str)):
            msg = "didOpen: textDocument needs uri, languageId and text strings"
            raise BadMessageError(msg)
        if language not in self.spec.languages:
            return None
        holders = self._documents.setdefault(uri, [])
        first = not holders
        if client not in holders:
            holders.append(client)
        if first:
            return _notification("textDocument/didOpen", params)
        return _notification(
            "textDocument/didChange",
            {
                "textDocument": {"uri": uri, "version": document.get("version")},
                "contentChanges": [{"text": text}],
            },
        )

    async def _initialize(self, client: LanguageClient, request_id: Any, params: Any) -> None:
        """The first ``initialize`` reaches the server (rooted at the sandbox's root); later
        ones get its cached answer."""
        if self._initialize_result is not None:
            client.send_message(
                {"jsonrpc": "2.0", "id": request_id, "result": self._initialize_result}
            )
            return
        if self._initialize_waiters is not None:
            self._initialize_waiters.append((client, request_id))
            return
        self._initialize_waiters = [(client, request_id)]
        root_uri = Path(self.root).as_uri()
        params = {
            **_object(params if params is not None else {}, "initialize params"),
            # The server must not watch the browser's pid (it is not in this sandbox).
            "processId": None,
            "rootUri": root_uri,
            "rootPath": self.root,
            "workspaceFolders": [{"uri": root_uri, "name": Path(self.root).name or "/"}],
            "initializationOptions": self.spec.settings,
        }
        server_id = self._new_id(None, None)
        await self._send(
            {"jsonrpc": "2.0", "id": server_id, "method": "initialize", "params": params}
        )

    def _client_response(self, client: LanguageClient, message: dict[str, Any]) -> None:
        """A client's answer to a server request the bridge forwarded to it."""
        key = id_key(message.get("id"))
        if self._server_requests.get(key) is client:
            del self._server_requests[key]
            self._to_server(message)

    def _new_id(self, client: LanguageClient | None, request_id: Any) -> int:
        self._next_id += 1
        self._pending[self._next_id] = (client, request_id)
        return self._next_id

    def _server_id(self, client: LanguageClient, request_id: Any) -> int | None:
        for server_id, (owner, client_id) in self._pending.items():
            if owner is client and id_key(client_id) == id_key(request_id):
                return server_id
        return None

    async def _send(self, message: dict[str, Any]) -> None:
        if self._process is not None:
            await self._process.send(message)

    def _to_server(self, message: dict[str, Any]) -> None:
        """Send without waiting (from synchronous code), in order with every other message."""
        if self._process is not None:
            self._process.write(message)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task of this server's (cancelled when its process ends)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- server to clients --------------------------------------------------------------------

    def _from_server(self, message: dict[str, Any]) -> None:
        self.last_server_message_at = time.time()
        method = message.get("method")
        if method is None:
            self._server_response(message)
        elif "id" in message:
            self._server_request(method, message)
        else:
            for client in list(self.clients):
                client.send_message(message)

    def _server_response(self, message: dict[str, Any]) -> None:
        server_id = message.get("id")
        if not isinstance(server_id, int) or server_id not in self._pending:
            return
        client, client_id = self._pending.pop(server_id)
        if client is None:
            self._initialized(message)
        elif client in self.clients:
            client.send_message({**message, "id": client_id})

    def _initialized(self, reply: dict[str, Any]) -> None:
        """The server answered the bridge's ``initialize``: answer every client waiting."""
        waiters, self._initialize_waiters = self._initialize_waiters or [], None
        if isinstance(reply.get("result"), dict):
            self._initialize_result = reply["result"]
        for client, request_id in waiters:
            client.send_message({**reply, "id": request_id})

    def _server_request(self, method: str, message: dict[str, Any]) -> None:
        """Answer a request of the server, or forward it to the client whose request is in
        flight (the latest), which answers it."""
        if method in FORWARDED_SERVER_REQUESTS:
            asking = [c for c, _ in self._pending.values() if c is not None and c in self.clients]
            if asking:
                self._server_requests[id_key(message["id"])] = asking[-1]
                asking[-1].send_message(message)
                return
        reply = {"jsonrpc": "2.0", "id": message["id"]}
        self._to_server({**reply, **self._default_answer(method, message.get("params"))})

    def _default_answer(self, method: str, params: Any) -> dict[str, Any]:
        if method == "workspace/configuration":
            items = params.get("items") if isinstance(params, dict) else None
            sections = [i.get("section") if isinstance(i, dict) else None for i in items or []]
            return {
                "result": [
                    self.spec.settings.get(s) if isinstance(s, str) else None for s in sections
                ]
            }
        if method == "workspace/applyEdit":
            return {"result": {"applied": False, "failureReason": "no client is asking"}}
        if method == "window/showDocument":
            return {"result": {"success": False}}
        if method in {
            "client/registerCapability",
            "client/unregisterCapability",
            "window/workDoneProgress/create",
            "window/showMessageRequest",
            "workspace/workspaceFolders",
        }:
            return {"result": None}
        return {"error": {"code": METHOD_NOT_FOUND, "message": f"{method} is not supported"}}

    # -- the process --------------------------------------------------------------------------

    async def _start(self) -> None:
        process = LanguageServerProcess(
            self.name, self.spec.argv, self.root, self.limits.max_message_bytes
        )
        self._reset()
        if self.spec.prepare is not None:
            await asyncio.to_thread(self.spec.prepare)
        await process.start()
        self._process = process
        self.status = "started"
        self._spawn(self._read(process))
        if self.limits.memory_limit > 0:
            self._spawn(self._watch_memory(process))

    async def _read(self, process: LanguageServerProcess) -> None:
        """Relay the server's messages until its output ends; then it has ended."""
        why = "it exited"
        answered = False
        try:
            while (message := await process.receive()) is not None:
                answered = True
                self._from_server(message)
        except ServerOutputError as e:
            log.warning("lsp %s | the server wrote %s: stopping it", self.name, e)
            why = "it wrote something that is not LSP"
        except asyncio.CancelledError:
            return
        if process is not self._process:
            return
        if process.killed_because is not None:
            await self._ended(process, RESTARTED_CLOSE, process.killed_because)
        elif answered:
            await self._ended(process, RESTARTED_CLOSE, why)
        else:
            # Ended before it said anything: starting it again at once would fail the same
            # way, so clients are told to wait (a 1012 asks them to reconnect now).
            await self._ended(process, SERVER_ERROR, "it exited as it started")

    async def _watch_memory(self, process: LanguageServerProcess) -> None:
        limit = self.limits.memory_limit
        while process.running:
            await asyncio.sleep(self.limits.memory_check_interval)
            used = process.memory()
            if used > limit:
                log.warning(
                    "lsp %s | using %d MiB, more than its %d MiB: killing it",
                    self.name,
                    used // 1024**2,
                    limit // 1024**2,
                )
                process.kill(f"it used more than {limit // 1024**2} MiB")
                return

    async def _ended(self, process: LanguageServerProcess, code: int, why: str) -> None:
        """The server ended by itself (or was killed): disconnect every client."""
        prefix = (
            "language server restarted" if code == RESTARTED_CLOSE else "language server failed"
        )
        self._forget(process, code, f"{prefix}: {why}")
        await process.stop()
        log.warning("lsp %s | ended: %s (status %s)", self.name, why, await process.wait())

    def _forget(self, process: LanguageServerProcess, code: int, reason: str) -> None:
        """Drop ``process``'s state and clients at once (before any wait, so that a client
        arriving meanwhile gets a new server and nothing of this one)."""
        if self._process is process:
            self._process = None
        self.status = "stopped"
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        clients, self.clients = self.clients, []
        self._reset()
        for client in clients:
            client.disconnect(code, reason)

    def _stop_if_idle(self) -> None:
        self._idle = None
        if not self.clients:
            log.info("lsp %s | no client for %gs: stopping", self.name, self.limits.idle_timeout)
            self._spawn(self.stop())

    async def stop(self) -> None:
        """Stop the server (idle, or the agent stops); clients still connected are closed."""
        process = self._process
        if process is None:
            return
        self._forget(process, GOING_AWAY, "the language server stopped")
        await process.stop()


def _notification(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def _iso(when: float | None) -> str | None:
    return isoformat(when) if when is not None else None


class LanguageServers:
    """Every server the agent offers, by name."""

    def __init__(self, specs: dict[str, ServerSpec], root: str, limits: LanguageServerLimits):
        self.limits = limits
        self.servers = {
            name: LanguageServer(name, spec, root, limits) for name, spec in specs.items()
        }

    def get(self, name: str) -> LanguageServer | None:
        """The server of that name, None if there is none."""
        return self.servers.get(name)

    def model(self) -> dict[str, SessionModel]:
        """Every server's status, by name."""
        return {name: server.model() for name, server in self.servers.items()}

    async def shutdown(self) -> None:
        """Stop every server (the agent stops)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*(server.stop() for server in self.servers.values()))
