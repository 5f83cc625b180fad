"""``WS /w/<uuid>/terminals/websocket/<name>``: the browser's terminal, relayed to the agent.

terminado's JSON protocol passes through unchanged (``AgentRelay``); frames from the browser
are checked first. A slow browser slows the agent, which then stops reading the PTY.
"""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import quote

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection

from extensions.sandboxes.agent_client import AgentError, AgentUnresponsive
from extensions.sandboxes.errors import SandboxUnavailable, SandboxUnresponsive
from extensions.sandboxes.handlers import running_sandbox
from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.relay import UNRESPONSIVE_CLOSE, AgentRelay
from extensions.terminals.manager import no_terminal
from platform_server.handlers import WORKSPACE_ROUTE

MAX_MESSAGE_BYTES = 1 << 20
MAX_TERMINAL_SIZE = 10_000
# WebSocket close codes: 1001 going away, 1003 unsupported data, 1011 server error.
GOING_AWAY, BAD_DATA, SERVER_ERROR = 1001, 1003, 1011


def invalid_frame(message: str | bytes) -> str | None:
    """Why a browser frame is not terminado protocol, or None when it is fine."""
    if isinstance(message, bytes):
        return "binary frames are not terminal messages"
    try:
        frame = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return "not JSON"
    if not isinstance(frame, list) or not frame or not isinstance(frame[0], str):
        return "not a [command, ...] list"
    if frame[0] == "stdin":
        return None if len(frame) == 2 and isinstance(frame[1], str) else "bad stdin"
    if frame[0] == "set_size":
        sizes = frame[1:]
        valid = len(sizes) in (2, 4) and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_TERMINAL_SIZE
            for n in sizes[:2]
        )
        return None if valid else "bad set_size"
    return f"unknown command {frame[0][:20]!r}"


class TerminalProxyHandler(WebSocketMixin, AgentRelay, JupyterHandler):
    """Relays one terminal between a browser (or any Jupyter client) and the agent."""

    auth_resource = "terminals"

    @property
    def max_message_size(self) -> int:
        """Terminal frames are keystrokes and sizes: 1 MiB is plenty."""
        return MAX_MESSAGE_BYTES

    async def get(self, workspace_id: str, name: str) -> None:
        """Check the owner, connect to the agent, then accept the browser's upgrade."""
        sandboxes = cast(Sandboxes, self.settings["sandboxes"])
        path = f"/terminals/websocket/{quote(name, safe='')}"
        since = self.get_argument("since", None)
        if since is not None and since.isdigit():
            path += f"?since={since}"
        try:
            row = await running_sandbox(
                self, workspace_id, "No such terminal: the workspace's sandbox is not running."
            )
            self.upstream = await sandboxes.client(row).websocket(path)
        except (SandboxUnresponsive, AgentUnresponsive):
            self.refusal = UNRESPONSIVE_CLOSE
        except HTTPClientError as e:
            # The agent answered the upgrade with an HTTP status instead of accepting it.
            if e.code == 404:
                raise no_terminal(name).to_http() from e
            raise SandboxUnavailable().to_http() from e
        except AgentError as e:
            raise SandboxUnavailable().to_http() from e
        await cast(Any, super().get(workspace_id, name))

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Start relaying the agent's output to the browser."""
        super().open(*args, **kwargs)
        self.start_relay()

    def upstream_closed(self, upstream: WebSocketClientConnection) -> None:
        """Not 1000/1001: @jupyterlab/services reconnects after any other code, which finds the
        terminal again after an agent or replica restart (404 otherwise)."""
        self.close(SERVER_ERROR, "The terminal's connection to its sandbox was lost.")

    async def on_message(self, message: str | bytes) -> None:
        """Forward a valid frame to the agent; close on anything else."""
        problem = invalid_frame(message)
        if problem is not None:
            self.close(BAD_DATA, f"Bad terminal message: {problem}.")
            return
        await self.forward(message, (GOING_AWAY, "The terminal's sandbox stopped."))


default_handlers = [
    (rf"{WORKSPACE_ROUTE}/terminals/websocket/(?P<name>[^/]+)", TerminalProxyHandler),
]
