"""``WS /w/<uuid>/terminals/websocket/<name>``: the browser's terminal, relayed to the agent.

terminado's JSON protocol passes through unchanged: frames go on as they are on the wire
(``SplicedRelay``), frames from the browser are checked first, and a viewer's messages are
dropped (they watch the terminal, they do not type in it). A slow browser slows the agent, which
then stops reading the PTY.
"""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import quote

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin

from extensions.sandboxes.access_watch import AccessWatch
from extensions.sandboxes.agent_client import AgentError, AgentUnresponsive
from extensions.sandboxes.agent_stream import AgentRefused, open_agent_stream
from extensions.sandboxes.errors import SandboxUnavailable, SandboxUnresponsive
from extensions.sandboxes.frames import TEXT
from extensions.sandboxes.handlers import running_sandbox, socket_access
from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.relay import UNRESPONSIVE_CLOSE, SplicedRelay
from extensions.terminals.manager import no_terminal
from extensions.workspaces.roles import Action
from platform_server.handlers import WORKSPACE_ROUTE

MAX_MESSAGE_BYTES = 1 << 20
MAX_TERMINAL_SIZE = 10_000
# WebSocket close codes: 1001 going away, 1003 unsupported data, 1007 not UTF-8, 1011 server
# error.
GOING_AWAY, BAD_DATA, NOT_UTF8, SERVER_ERROR = 1001, 1003, 1007, 1011
STDIN_PREFIXES = ('["stdin","', '["stdin", "')
"""How a keystroke's frame starts (JSON.stringify writes the first, Python's json the second)."""


def plain_stdin(message: str) -> bool:
    """Whether ``message`` is ``["stdin", "<text>"]`` with text that JSON needs no escape for:
    the usual keystroke, accepted without parsing. Anything else goes to the JSON parser."""
    for prefix in STDIN_PREFIXES:
        if message.startswith(prefix) and message.endswith('"]'):
            text = message[len(prefix) : -2]
            return (
                len(message) >= len(prefix) + 2
                and '"' not in text
                and "\\" not in text
                and text.isprintable()
            )
    return False


def invalid_frame(message: str | bytes) -> str | None:
    """Why a browser frame is not terminado protocol, or None when it is fine."""
    if isinstance(message, bytes):
        return "binary frames are not terminal messages"
    if plain_stdin(message):
        return None
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


class TerminalProxyHandler(WebSocketMixin, AccessWatch, SplicedRelay, JupyterHandler):
    """Relays one terminal between a browser (or any Jupyter client) and the agent."""

    auth_resource = "terminals"

    @property
    def max_message_size(self) -> int:
        """Terminal frames are keystrokes and sizes: 1 MiB is plenty."""
        return MAX_MESSAGE_BYTES

    async def get(self, workspace_id: str, name: str) -> None:
        """Check the caller's role, connect to the agent, then accept the browser's upgrade."""
        sandboxes = cast(Sandboxes, self.settings["sandboxes"])
        path = f"/terminals/websocket/{quote(name, safe='')}"
        since = self.get_argument("since", None)
        if since is not None and since.isdigit():
            path += f"?since={since}"
        self.access = await socket_access(self, workspace_id, Action.WATCH)
        try:
            row = await running_sandbox(
                self, self.access, "No such terminal: the workspace's sandbox is not running."
            )
            client = sandboxes.client(row)
            self.agent = await open_agent_stream(client, sandboxes.agent_token(row["id"]), path)
        except (SandboxUnresponsive, AgentUnresponsive):
            self.refusal = UNRESPONSIVE_CLOSE
        except AgentRefused as e:
            if e.status == 404:
                raise no_terminal(name).to_http() from e
            raise SandboxUnavailable().to_http() from e
        except AgentError as e:
            raise SandboxUnavailable().to_http() from e
        await cast(Any, super().get(workspace_id, name))

    async def open(self, *args: Any, **kwargs: Any) -> None:
        """Relay between the browser and the agent until the browser's side ends."""
        super().open(*args, **kwargs)
        self.watch_access()
        await self.splice()

    def upstream_closed(self) -> None:
        """Not 1000/1001: @jupyterlab/services reconnects after any other code, which finds the
        terminal again after an agent or replica restart (404 otherwise)."""
        self.close(SERVER_ERROR, "The terminal's connection to its sandbox was lost.")

    def agent_gone(self) -> None:
        """A keystroke found the agent's side closed: the sandbox stopped."""
        self.close(GOING_AWAY, "The terminal's sandbox stopped.")

    def check_message(self, opcode: int, payload: bytes) -> tuple[int, str] | None:
        """Close on anything that is not terminado protocol."""
        message: str | bytes = payload
        if opcode == TEXT:
            try:
                message = payload.decode()
            except UnicodeDecodeError:
                return NOT_UTF8, "Bad terminal message: not UTF-8."
        problem = invalid_frame(message)
        return None if problem is None else (BAD_DATA, f"Bad terminal message: {problem}.")

    def passes_messages(self) -> bool:
        """A viewer's messages are checked and dropped: they watch, they do not type."""
        return self.access is not None and self.access.role.allows(Action.INPUT)


default_handlers = [
    (rf"{WORKSPACE_ROUTE}/terminals/websocket/(?P<name>[^/]+)", TerminalProxyHandler),
]
