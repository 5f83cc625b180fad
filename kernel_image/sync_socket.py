"""``WS /api/sync``: the platform's one connection for file changes (see sync.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tornado.websocket import WebSocketClosedError

from kernel_image.auth import AgentSocket
from kernel_image.sync import SenderGone, SyncChannel

REPLACED = 4000


class SyncSocket(AgentSocket):
    """Streams change messages; takes ``{"ack": seq}`` and ``{"flush": id}``.

    A new connection replaces the previous one (any replica of the platform may take over).
    """

    @property
    def channel(self) -> SyncChannel:
        """The agent's sync channel."""
        channel: SyncChannel = self.settings["sync_channel"]
        return channel

    def prepare(self) -> None:
        """Authenticate before the upgrade."""
        self.check_upgrade()

    def open(self, *args: str, **kwargs: str) -> None:
        """Become the channel's connection, replacing any previous one."""
        previous = self.channel.sender
        if isinstance(previous, SyncSocket) and previous is not self:
            previous.close(REPLACED, "another platform connection took over")
        self.channel.attach(self)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one change (awaiting the write: a slow platform slows the sender);
        ``SenderGone`` if the socket closed meanwhile."""
        try:
            await self.write_message(json.dumps(message))
        except WebSocketClosedError as e:
            raise SenderGone from e

    async def on_message(self, message: str | bytes) -> None:
        """``{"ack": n}`` or ``{"flush": id}``; anything else closes the socket."""
        try:
            command = json.loads(message)
            if not isinstance(command, dict):
                raise TypeError
        except (ValueError, TypeError):
            self.close(1007, "expected {'ack': n} or {'flush': id}")
            return
        if isinstance(command.get("ack"), int):
            self.channel.ack(command["ack"])
        elif "flush" in command:
            try:
                await self.channel.flush(command["flush"])
            except (WebSocketClosedError, asyncio.CancelledError):
                return

    def on_close(self) -> None:
        """Changes not acknowledged go again to the next connection."""
        self.channel.detach(self)
