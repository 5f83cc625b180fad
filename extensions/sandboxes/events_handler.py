"""``WS /w/<uuid>/api/events``: file changes and sandbox states of a workspace, as they happen.

Messages: ``{"type": "created"|"modified"|"deleted"|"moved", "path", "last_modified",
"old_path"?}`` whichever side made the change, ``{"type": "sandbox", "state", ...}``, and
``{"type": "member", "username", "role"}`` when the owner shares the workspace, changes a role
or removes a member (``role`` null). The first message is the sandbox's current state.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, cast

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado.websocket import WebSocketClosedError

from extensions.sandboxes.access_watch import AccessWatch
from extensions.sandboxes.handlers import socket_access
from extensions.sandboxes.manager import Sandboxes
from extensions.workspaces.member_store import MEMBER_EVENT
from extensions.workspaces.roles import Action
from platform_server.handlers import WORKSPACE_ROUTE, write_json_error

# Events waiting for a slow client; past this the client is disconnected (it reloads).
MAX_QUEUED = 1000


class EventsHandler(WebSocketMixin, AccessWatch, JupyterHandler):
    """Streams one workspace's events to one editor."""

    auth_resource = "contents"
    _queue: asyncio.Queue[dict[str, Any] | None]
    _unsubscribe: Any = None
    _pump: asyncio.Task[None] | None = None
    workspace_id: uuid.UUID

    async def get(self, workspace_id: str) -> None:
        """Check the caller's role (any may listen), then accept the upgrade."""
        self.access = await socket_access(self, workspace_id, Action.READ, active=False)
        self.workspace_id = self.access.workspace_id
        await cast(Any, super().get(workspace_id))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A refused upgrade answers JSON, as every API route does."""
        write_json_error(self, status_code, kwargs.get("exc_info"))

    @property
    def sandboxes(self) -> Sandboxes:
        """The sandboxes service."""
        return cast(Sandboxes, self.settings["sandboxes"])

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Subscribe, and start with the sandbox's state."""
        super().open(*args, **kwargs)
        self.watch_access()
        self._queue = asyncio.Queue()
        self._unsubscribe = self.sandboxes.events.subscribe(self.workspace_id, self._enqueue)
        self._pump = asyncio.create_task(self._send_events())

    def _enqueue(self, event: dict[str, Any]) -> None:
        if self._queue.qsize() >= MAX_QUEUED:
            self.close(1008, "Too many events waiting; reload the workspace.")
            return
        if event.get("type") == MEMBER_EVENT:
            # Account ids stay on the platform; clients know members by their usernames.
            event = {key: value for key, value in event.items() if key != "user_id"}
        self._queue.put_nowait(event)

    async def _send_events(self) -> None:
        state = self.sandboxes.model(await self.sandboxes.row(self.workspace_id))
        try:
            await self.write_message(json.dumps({"type": "sandbox", **state}))
            while (event := await self._queue.get()) is not None:
                await self.write_message(json.dumps(event))
        except WebSocketClosedError:
            return

    def on_message(self, message: str | bytes) -> None:
        """Clients only listen."""

    def on_close(self) -> None:
        """Unsubscribe."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        super().on_close()


default_handlers = [(rf"{WORKSPACE_ROUTE}/api/events", EventsHandler)]
