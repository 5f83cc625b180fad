"""``WS /lsp/ws/<server>`` (one JSON-RPC message per text frame) and ``GET /lsp/status``."""

from __future__ import annotations

import json
import logging
from typing import Any

from tornado.websocket import WebSocketClosedError

from kernel_image.auth import AgentBase, AgentHandler, AgentSocket, ApiError
from kernel_image.lsp_session import BadMessageError, LanguageServer, LanguageServers

log = logging.getLogger(__name__)

UNSUPPORTED_DATA, INVALID_DATA, SERVER_ERROR = 1003, 1007, 1011
MAX_REASON = 120
"""Close reasons are at most 123 bytes long."""


class BadFrameError(Exception):
    """A frame that is not one JSON-RPC 2.0 message: ``code`` and the reason to close with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_frame(frame: str | bytes) -> dict[str, Any]:
    """The JSON-RPC 2.0 message of one WebSocket frame; ``BadFrameError`` if it is not one."""
    if isinstance(frame, bytes):
        raise BadFrameError(UNSUPPORTED_DATA, "binary frames are not JSON-RPC messages")
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        raise BadFrameError(INVALID_DATA, "a frame must be JSON") from None
    if not isinstance(message, dict):
        raise BadFrameError(INVALID_DATA, "a frame must be one JSON-RPC message (an object)")
    if message.get("jsonrpc") != "2.0":
        raise BadFrameError(INVALID_DATA, 'a message must have "jsonrpc": "2.0"')
    if "method" in message and not isinstance(message["method"], str):
        raise BadFrameError(INVALID_DATA, "method must be a string")
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str | None):
        raise BadFrameError(INVALID_DATA, "id must be a number or a string")
    if "method" not in message and "id" not in message:
        raise BadFrameError(INVALID_DATA, "a message needs a method or an id")
    if not isinstance(message.get("params"), dict | list | None):
        raise BadFrameError(INVALID_DATA, "params must be an object or an array")
    return message


def _servers(handler: AgentBase) -> LanguageServers:
    servers: LanguageServers = handler.settings["language_servers"]
    return servers


class LanguageServerSocket(AgentSocket):
    """One client of one language server."""

    server: LanguageServer | None = None

    @property
    def max_message_size(self) -> int:
        """A whole document travels in one message."""
        return _servers(self).limits.max_message_bytes

    def prepare(self) -> None:
        """Authenticate and find the server before the upgrade (failures are JSON errors)."""
        self.check_upgrade()
        name = self.path_args[0] if self.path_args else ""
        self.server = _servers(self).get(name)
        if self.server is None:
            raise ApiError(404, f"no language server named {name[:64]!r}")

    async def open(self, *args: str, **kwargs: str) -> None:
        """Join the server, starting it if none runs; frames wait until it has started."""
        server = self.server
        if server is None:
            return
        self.set_nodelay(True)
        try:
            await server.attach(self)
        except Exception:
            log.exception("lsp %s | could not start", server.name)
            self.disconnect(SERVER_ERROR, "the language server could not start")

    async def on_message(self, message: str | bytes) -> None:
        """Check a frame, then hand it to the bridge."""
        server = self.server
        if server is None:
            return
        try:
            await server.from_client(self, parse_frame(message))
        except BadFrameError as e:
            self._drop(e.code, e.reason)
        except BadMessageError as e:
            self._drop(INVALID_DATA, str(e))

    def _drop(self, code: int, reason: str) -> None:
        log.info("lsp | closing a client: %s", reason)
        self.on_close()
        self.disconnect(code, reason)

    def on_close(self) -> None:
        """Leave the server: its documents close, its requests are cancelled."""
        if self.server is not None:
            self.server.detach(self)
            self.server = None

    # -- LanguageClient -----------------------------------------------------------------------

    def send_message(self, message: dict[str, Any]) -> None:
        """Send one message as one text frame (dropped once the socket is closed)."""
        try:
            future = self.write_message(json.dumps(message, ensure_ascii=False))
        except WebSocketClosedError:
            return
        # A write to a client that went away fails; that is expected, not worth a log line.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def disconnect(self, code: int, reason: str) -> None:
        """Close the socket (the server has let go of this client already)."""
        self.server = None
        self.close(code, reason[:MAX_REASON])


class LanguageServerStatusHandler(AgentHandler):
    """``GET /lsp/status``: every server's state, jupyter-lsp's ``sessions`` shape."""

    def get(self) -> None:
        """``{"version": 2, "sessions": {name: {handler_count, status, ...}}}``."""
        self.write_json({"version": 2, "sessions": _servers(self).model()})


default_handlers = [
    (r"/lsp/status", LanguageServerStatusHandler),
    (r"/lsp/ws/([^/]+)", LanguageServerSocket),
]
