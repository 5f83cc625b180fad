"""``WS /terminals/websocket/<name>``: terminado's JSON protocol, with scrollback replay.

Client to agent: ``["stdin", text]``, ``["set_size", rows, cols, ...]``. Agent to client:
``["setup", {}]`` once, then ``["stdout", text]``, and ``["disconnect", 1]`` when the terminal
ends. A frame that breaks these rules closes the socket (1003 or 1007) with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from tornado.websocket import WebSocketClosedError

from kernel_image.auth import AgentSocket, ApiError
from kernel_image.terminals import (
    FRAME_BYTES,
    InputBacklogFullError,
    Terminal,
    TerminalManager,
)

log = logging.getLogger(__name__)

MAX_SIZE = 10000
"""The most rows or columns a client may ask for (terminado ignores anything above)."""


class BadFrameError(Exception):
    """A client message that breaks the protocol; the text is the close reason."""


def _consume(future: asyncio.Future[None]) -> None:
    # A write to a client that went away fails; that is expected, not worth a log line.
    if not future.cancelled():
        future.exception()


def parse_size(command: list[Any]) -> tuple[int, int]:
    """Rows and columns of a ``["set_size", rows, cols, ...]`` message."""
    if len(command) < 3:
        msg = "set_size needs rows and columns"
        raise BadFrameError(msg)
    rows, cols = command[1], command[2]
    for value in (rows, cols):
        if type(value) is not int or not 1 <= value <= MAX_SIZE:
            msg = f"set_size rows and columns must be integers from 1 to {MAX_SIZE}"
            raise BadFrameError(msg)
    return rows, cols


class TerminalSocket(AgentSocket):
    """One client of one terminal."""

    terminal: Terminal | None = None
    since: int | None = None

    def initialize(self) -> None:
        self.size: tuple[int | None, int | None] = (None, None)

    @property
    def terminal_manager(self) -> TerminalManager:
        """The agent's terminals."""
        manager: TerminalManager = self.settings["terminal_manager"]
        return manager

    def prepare(self) -> None:
        """Authenticate and validate before the upgrade, so failures are JSON errors."""
        self.check_upgrade()
        name = self.path_args[0] if self.path_args else ""
        self.terminal = self.terminal_manager.get(name)
        if self.terminal is None:
            raise ApiError(404, f"no terminal named {name!r}")
        since = self.get_query_argument("since", None)
        if since is not None:
            if not since.isdigit():
                raise ApiError(400, "since must be a byte offset (a non-negative integer)")
            self.since = int(since)

    def open(self, *args: str, **kwargs: str) -> None:
        """Attach to the terminal; send ``setup`` and then the scrollback after ``since``."""
        terminal = self.terminal
        if terminal is None or terminal.exited.is_set():
            self.close(1011, "the terminal has ended")
            return
        # Keystroke echoes are tiny: over TCP (a Kubernetes sandbox), Nagle's algorithm would
        # hold one back until the previous one is acknowledged.
        self.set_nodelay(True)
        replay = terminal.attach(self, self.since)
        self.write_json(["setup", {}])
        for start in range(0, len(replay), FRAME_BYTES):
            self.write_json(["stdout", replay[start : start + FRAME_BYTES]])

    def on_message(self, message: str | bytes) -> None:
        """Handle ``stdin`` and ``set_size``; ignore other message types, as terminado does."""
        terminal = self.terminal
        if terminal is None:
            return
        try:
            self._handle(terminal, message)
        except BadFrameError as e:
            log.info("terminal %s | closing a client: %s", terminal.name, e)
            self.drop(1003 if isinstance(message, bytes) else 1007, str(e))
        except InputBacklogFullError:
            self.drop(1013, "terminal input backlog full: the program is not reading")

    def _handle(self, terminal: Terminal, message: str | bytes) -> None:
        if isinstance(message, bytes):
            msg = "binary frames are not part of the protocol"
            raise BadFrameError(msg)
        try:
            command = json.loads(message)
        except ValueError:
            msg = "frames must be JSON"
            raise BadFrameError(msg) from None
        if not isinstance(command, list) or not command or not isinstance(command[0], str):
            msg = 'frames must be JSON arrays like ["stdin", text]'
            raise BadFrameError(msg)
        if command[0] == "stdin":
            if len(command) != 2 or not isinstance(command[1], str):
                msg = "stdin data must be one string"
                raise BadFrameError(msg)
            terminal.write_input(command[1].encode("utf-8", errors="replace"))
        elif command[0] == "set_size":
            self.size = parse_size(command)
            terminal.resize()

    def on_close(self) -> None:
        if self.terminal is not None:
            self.terminal.detach(self)
            self.terminal = None

    # -- TerminalClient -----------------------------------------------------------------------

    def write_json(self, content: Any) -> asyncio.Future[None] | None:
        """Send one JSON message; None if the socket is closed."""
        return self.send_output(json.dumps(content, ensure_ascii=False))

    def send_output(self, message: str) -> asyncio.Future[None] | None:
        """Send a message; None if the socket took it at once (or is closed), else a future
        that resolves once it is written."""
        try:
            future = self.write_message(message)
        except WebSocketClosedError:
            return None
        future.add_done_callback(_consume)
        return future if self._backlogged() else None

    def _backlogged(self) -> bool:
        """Whether output waits in this socket's buffer (the client reads slower than it comes)."""
        connection = self.ws_connection
        return bool(connection and connection.stream and connection.stream.writing())

    def drop(self, code: int, reason: str) -> None:
        """Detach from the terminal at once (later frames are ignored) and close."""
        self.on_close()
        self.close(code, reason)

    def terminal_exited(self) -> None:
        """The terminal ended: say so as terminado does, then close."""
        self.write_json(["disconnect", 1])
        self.terminal = None
        self.close(1000, "the terminal has ended")
