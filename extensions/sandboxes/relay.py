"""A WebSocket relayed to a sandbox's agent: the part the terminal and kernel relays share.

The handler connects ``upstream`` (the agent's socket) before it accepts the client's upgrade,
then calls ``start_relay``. Each direction awaits the other side's write before it reads more,
so a slow client slows the agent instead of filling this process's memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketHandler

from platform_server.handlers import write_json_error

# The close of a client's socket whose sandbox does not answer (1013: try again later).
UNRESPONSIVE_CLOSE = (1013, "The sandbox is not responding: try again in a moment.")


class AgentRelay(WebSocketHandler):
    """Mixin of a ``WebSocketHandler`` relaying to ``upstream``; subclasses say what a closed
    upstream means to their clients (``upstream_closed``)."""

    upstream: WebSocketClientConnection | None = None
    _pump: asyncio.Task[None] | None = None
    refusal: tuple[int, str] | None = None
    """Set before the upgrade when the agent cannot be reached: the client's socket is then
    accepted and closed at once with this (code, reason), which a browser can read (it
    cannot read an HTTP error answered to its upgrade)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A refused upgrade is answered as every API error: JSON ``{"message", "reason"}``."""
        write_json_error(self, status_code, kwargs.get("exc_info"))

    def start_relay(self) -> None:
        """Relay the agent's messages to the client from now on (call from ``open``); close
        at once with ``refusal`` if set."""
        if self.refusal is not None:
            self.close(*self.refusal)
            return
        # Small, interactive frames: without this, Nagle's algorithm and the client's delayed
        # ACK can hold a frame back for ~40 ms.
        self.set_nodelay(True)
        self._pump = asyncio.create_task(self._relay_from_agent())

    def upstream_closed(self, upstream: WebSocketClientConnection) -> None:
        """The agent closed its side: close the client's, with a code it understands."""
        raise NotImplementedError

    async def _relay_from_agent(self) -> None:
        upstream = self.upstream
        assert upstream is not None  # noqa: S101  (connected before the upgrade)
        while True:
            message = await upstream.read_message()
            if message is None:
                self.upstream_closed(upstream)
                return
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                upstream.close()
                return

    async def forward(self, message: str | bytes, lost: tuple[int, str]) -> None:
        """Send a client's message to the agent; close the client with ``lost`` (code,
        reason) if the agent's side is gone."""
        if self.upstream is None:
            return
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            self.close(*lost)

    def on_close(self) -> None:
        """Close the agent's side too."""
        if self.upstream is not None:
            self.upstream.close()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
