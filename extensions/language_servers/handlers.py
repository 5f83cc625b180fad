"""``GET /w/<uuid>/lsp/status`` and ``WS /w/<uuid>/lsp/ws/<server>``: a workspace's language
servers, which its sandbox's agent runs, in jupyter-lsp's shapes.

One JSON-RPC message per WebSocket text frame; frames from the browser are checked here, then
relayed to the agent unchanged (the agent shares one server between the workspace's clients,
see docs/agent-protocol.md).
"""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import quote

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection

from extensions.accounts.identity import PlatformUser
from extensions.sandboxes.access_watch import AccessWatch
from extensions.sandboxes.agent_client import AgentError, AgentUnresponsive
from extensions.sandboxes.errors import SandboxUnavailable, SandboxUnresponsive
from extensions.sandboxes.handlers import running_sandbox, socket_access
from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.relay import UNRESPONSIVE_CLOSE, AgentRelay
from extensions.workspaces.handlers import WorkspacesAPIHandler
from extensions.workspaces.roles import Action
from platform_server.errors import NotFound
from platform_server.handlers import WORKSPACE_ROUTE, unauthenticated

MAX_MESSAGE_BYTES = 16 * 1024**2
"""The largest frame (a whole document travels in one ``didOpen`` or ``didChange``)."""
# WebSocket close codes: 1003 unsupported data, 1007 invalid data, 1011 server error.
UNSUPPORTED_DATA, INVALID_DATA, SERVER_ERROR = 1003, 1007, 1011
AGENT_CLOSES = frozenset({1001, 1003, 1007, 1009, 1011, 1012})
"""Close codes of the agent's side passed on to the browser as they are (see
docs/api.md); any other end of the agent's side is a 1011."""

SPECS: dict[str, dict[str, Any]] = {
    "pylsp": {
        "display_name": "python-lsp-server (pylsp)",
        "languages": ["python"],
        "mime_types": ["text/python", "text/x-ipython"],
        "version": 2,
        "requires_documents_on_disk": False,
        "urls": {
            "home": "https://github.com/python-lsp/python-lsp-server",
            "issues": "https://github.com/python-lsp/python-lsp-server/issues",
        },
    }
}
"""The servers every sandbox offers, as jupyter-lsp describes a spec (never argv or env)."""


def invalid_frame(message: str | bytes) -> tuple[int, str] | None:
    """(close code, reason) for a browser frame that is not one JSON-RPC 2.0 message."""
    if isinstance(message, bytes):
        return UNSUPPORTED_DATA, "Binary frames are not JSON-RPC messages."
    try:
        frame = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return INVALID_DATA, "A frame must be JSON."
    if not isinstance(frame, dict) or frame.get("jsonrpc") != "2.0":
        return INVALID_DATA, 'A frame must be one JSON-RPC message with "jsonrpc": "2.0".'
    return None


def unknown_server(name: str) -> NotFound:
    """The 404 of a language server no sandbox offers."""
    return NotFound(f"No language server named '{name[:64]}'.")


class LanguageServerStatusHandler(WorkspacesAPIHandler):
    """``GET``: jupyter-lsp's ``/lsp/status`` for the workspace, and whether its sandbox runs."""

    auth_resource = "lsp"

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """``{"version": 2, "sandbox_running", "sessions", "specs"}``; ``sessions`` is empty
        while the sandbox is not running (no server can run then)."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        sandboxes = cast(Sandboxes, self.settings["sandboxes"])
        row = await sandboxes.row(ws)
        sessions: dict[str, Any] = {}
        running = row is not None and row["state"] == "running"
        if row is not None and running:
            try:
                report = await sandboxes.client(row).json("GET", "/lsp/status")
            except AgentUnresponsive as e:
                raise SandboxUnresponsive from e
            except AgentError as e:
                raise SandboxUnavailable from e
            sessions = {
                name: {**session, "spec": SPECS[name]}
                for name, session in report.get("sessions", {}).items()
                if name in SPECS
            }
        self.finish_json(
            {"version": 2, "sandbox_running": running, "sessions": sessions, "specs": SPECS}
        )


class LanguageServerProxyHandler(WebSocketMixin, AccessWatch, AgentRelay, JupyterHandler):
    """Relays one client of a language server between the browser and the agent."""

    auth_resource = "lsp"

    @property
    def max_message_size(self) -> int:
        """A whole document travels in one message."""
        return MAX_MESSAGE_BYTES

    async def get(self, workspace_id: str, name: str) -> None:
        """Check the user, the server's name and the caller's role (an editor's), connect to
        the agent, then accept the browser's upgrade."""
        if not isinstance(self.current_user, PlatformUser):
            raise unauthenticated()
        if name not in SPECS:
            raise unknown_server(name).to_http()
        sandboxes = cast(Sandboxes, self.settings["sandboxes"])
        self.access = await socket_access(self, workspace_id, Action.LANGUAGE_SERVER)
        try:
            row = await running_sandbox(
                self,
                self.access,
                "No language server: the workspace's sandbox is not running.",
            )
            self.upstream = await sandboxes.client(row).websocket(f"/lsp/ws/{quote(name)}")
        except (SandboxUnresponsive, AgentUnresponsive):
            self.refusal = UNRESPONSIVE_CLOSE
        except (AgentError, HTTPClientError) as e:
            raise SandboxUnavailable().to_http() from e
        await cast(Any, super().get(workspace_id, name))
        if self.ws_connection is None and self.upstream is not None:
            # The upgrade was refused (a foreign Origin): the agent's client goes too.
            self.upstream.close()

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Start relaying the agent's messages to the browser."""
        super().open(*args, **kwargs)
        self.watch_access()
        self.start_relay()

    def upstream_closed(self, upstream: WebSocketClientConnection) -> None:
        """The agent's reasons reach the browser (1012: the server restarted, reconnect)."""
        code = upstream.close_code
        if code in AGENT_CLOSES:
            self.close(code, upstream.close_reason)
        else:
            self.close(SERVER_ERROR, "The language server's connection to its sandbox was lost.")

    async def on_message(self, message: str | bytes) -> None:
        """Forward a valid frame to the agent; close on anything else."""
        problem = invalid_frame(message)
        if problem is not None:
            self.close(*problem)
            return
        await self.forward(message, (1001, "The workspace's sandbox stopped."))


default_handlers = [
    (rf"{WORKSPACE_ROUTE}/lsp/status", LanguageServerStatusHandler),
    (rf"{WORKSPACE_ROUTE}/lsp/ws/(?P<name>[^/]+)", LanguageServerProxyHandler),
]
