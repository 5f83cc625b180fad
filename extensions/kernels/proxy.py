"""``WS /w/<uuid>/api/kernels/<id>/channels``: a Jupyter client's kernel connection, relayed to
the sandbox's agent.

The agent speaks both of jupyter_server's wire formats (``v1.kernel.websocket.jupyter.org``,
which current JupyterLab negotiates, and the legacy JSON one), so the proxy asks it for the
format the client chose and passes frames through unchanged: nothing is parsed or converted
here, except that a viewer's frames are read to drop all but ``kernel_info_request``
(``watch_only``). Each direction awaits the other side's write before reading more, so a slow
client slows the agent's writes to it (which then drops output for that client, see the agent
protocol) instead of filling this process's memory.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, cast
from urllib.parse import quote

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado.httpclient import HTTPClientError
from tornado.websocket import (
    WebSocketClientConnection,
)

from extensions.accounts.identity import PlatformUser
from extensions.kernels.handlers import KERNEL_ID
from extensions.kernels.manager import no_kernel
from extensions.kernels.watch_only import viewer_may_send
from extensions.sandboxes.access_watch import AccessWatch
from extensions.sandboxes.agent_client import AgentError, AgentUnresponsive
from extensions.sandboxes.errors import SandboxUnavailable, SandboxUnresponsive
from extensions.sandboxes.handlers import running_sandbox, socket_access
from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.relay import UNRESPONSIVE_CLOSE, AgentRelay
from extensions.workspaces.manager import Workspaces
from extensions.workspaces.roles import Action
from platform_server.errors import InvalidInput, PlatformError
from platform_server.handlers import WORKSPACE_ROUTE

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
MAX_CLIENT_MESSAGE_BYTES = 32 * 1024 * 1024
"""The largest message a client may send (the agent's own limit)."""
MAX_KERNEL_MESSAGE_BYTES = 256 * 1024 * 1024
"""The largest message taken from the agent (a kernel's output can be large)."""
HANDSHAKE_TIMEOUT = 90.0
"""Seconds the agent may take to accept: it first waits (up to 60 s) for the kernel to answer."""
# Close codes passed on from the agent (1000: the kernel was shut down; 1001: another
# connection of the same session took over; 1013: too slow). Any other end is 1011, after which
# @jupyterlab/services reconnects (it gives up on 1000 and 1001): it then finds the kernel again
# through any replica, or learns it is gone (404).
RELAYED_CLOSE_CODES = frozenset({1000, 1001, 1003, 1007, 1008, 1009, 1011, 1013})
CONNECTION_LOST = 1011
TOUCH_INTERVAL = 60.0
"""Seconds between two notes of a connection's activity on its workspace (one database
round each), so that a notebook in use keeps its sandbox from being culled as idle."""


def offered_subprotocols(header: str | None) -> list[str]:
    """The subprotocols a client offered in ``Sec-WebSocket-Protocol``."""
    return [p.strip() for p in (header or "").split(",") if p.strip()]


class KernelProxyHandler(WebSocketMixin, AccessWatch, AgentRelay, JupyterHandler):
    """Relays one kernel connection between a Jupyter client and the agent."""

    auth_resource = "kernels"
    protocol: str | None = None
    _touch: asyncio.Task[None] | None = None
    _touched = 0.0

    @property
    def max_message_size(self) -> int:
        """Code, comm messages and their buffers: up to 32 MiB per message."""
        return MAX_CLIENT_MESSAGE_BYTES

    def get_compression_options(self) -> None:
        """No compression (jupyter_server's default)."""
        return

    def set_default_headers(self) -> None:
        """No API headers on a WebSocket (as jupyter_server's kernel socket)."""

    async def get(self, workspace_id: str, kernel_id: str) -> None:
        """Check the caller's role, connect to the agent in the client's format, then
        accept."""
        sandboxes = cast(Sandboxes, self.settings["sandboxes"])
        self.access = await socket_access(self, workspace_id, Action.WATCH)
        try:
            row = await running_sandbox(self, self.access, f"Kernel does not exist: {kernel_id}")
        except SandboxUnresponsive:
            self.refusal = UNRESPONSIVE_CLOSE
            await cast(Any, super().get(workspace_id, kernel_id))
            return
        assert row["workspace_id"] is not None  # noqa: S101  (an assigned sandbox)
        ws = row["workspace_id"]
        self._touched = time.monotonic()
        offered = offered_subprotocols(self.request.headers.get("Sec-WebSocket-Protocol"))
        path = f"/api/kernels/{quote(kernel_id, safe='')}/channels"
        session_id = self.get_argument("session_id", None)
        if session_id:
            path += f"?session_id={quote(session_id, safe='')}"
        try:
            self.upstream = await sandboxes.client(row).websocket(
                path,
                max_message_size=MAX_KERNEL_MESSAGE_BYTES,
                subprotocols=[V1_PROTOCOL] if V1_PROTOCOL in offered else None,
                handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except HTTPClientError as e:
            if e.code == 404:
                raise no_kernel(kernel_id).to_http() from e
            if e.code == 400:
                raise InvalidInput("Bad session_id.").to_http() from e
            raise await self._unreachable(sandboxes, ws, kernel_id) from e
        except AgentUnresponsive:
            self.refusal = UNRESPONSIVE_CLOSE
        except (OSError, AgentError) as e:
            raise await self._unreachable(sandboxes, ws, kernel_id) from e
        if self.upstream is not None:
            self.protocol = self.upstream.selected_subprotocol
        await cast(Any, super().get(workspace_id, kernel_id))

    @staticmethod
    async def _unreachable(sandboxes: Sandboxes, ws: uuid.UUID, kernel_id: str) -> PlatformError:
        """404 when the sandbox died (its kernels with it; it is marked failed), else 503."""
        row = await sandboxes.current(ws)
        if row is None or row["state"] != "running":
            return no_kernel(kernel_id).to_http()
        return SandboxUnavailable().to_http()

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """The format the agent agreed to (v1 when the client offered it)."""
        return self.protocol if self.protocol in subprotocols else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Start relaying the agent's messages to the client."""
        super().open(*args, **kwargs)
        self.watch_access()
        self.start_relay()

    def upstream_closed(self, upstream: WebSocketClientConnection) -> None:
        """The agent's close code when the client knows it, else "connection lost"."""
        if upstream.close_code in RELAYED_CLOSE_CODES:
            self.close(upstream.close_code, upstream.close_reason or "")
        else:
            self.close(CONNECTION_LOST, "The connection to the kernel's sandbox was lost.")

    async def on_message(self, message: str | bytes) -> None:
        """Pass a client's frame to the agent (which checks it); drop a viewer's, but for
        ``kernel_info_request``."""
        if self.access is None:
            return
        if not self.access.role.allows(Action.INPUT) and not viewer_may_send(
            message, v1=self.protocol == V1_PROTOCOL
        ):
            return
        if time.monotonic() - self._touched > TOUCH_INTERVAL and self._touch is None:
            self._touched = time.monotonic()
            self._touch = asyncio.create_task(self._note_activity())
        await self.forward(
            message, (CONNECTION_LOST, "The connection to the kernel's sandbox was lost.")
        )

    async def _note_activity(self) -> None:
        """Record the workspace's activity (in the background: messages never wait for it)."""
        workspaces = cast(Workspaces, self.settings["workspaces"])
        user = self.current_user
        try:
            if isinstance(user, PlatformUser):
                await workspaces.access(
                    self.path_kwargs["workspace_id"], user.user_id, Action.WATCH
                )
        except Exception as e:
            self.log.warning("kernel socket | could not note activity: %s", e)
        finally:
            self._touch = None


default_handlers = [
    (rf"{WORKSPACE_ROUTE}/api/kernels/{KERNEL_ID}/channels", KernelProxyHandler),
]
