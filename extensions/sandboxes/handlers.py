"""REST handlers of ``/api/workspaces/<uuid>/sandbox``."""

from __future__ import annotations

import asyncio
import json
import time
from typing import cast

from tornado import web
from tornado.iostream import StreamClosedError

from extensions.sandboxes.manager import Sandboxes
from extensions.workspaces.handlers import WorkspacesAPIHandler

PROGRESS_POLL = 0.2


class SandboxAPIHandler(WorkspacesAPIHandler):
    """Base: the services, and the owner check of the URL's workspace."""

    @property
    def sandboxes(self) -> Sandboxes:
        """The sandboxes service."""
        return cast(Sandboxes, self.settings["sandboxes"])


class SandboxHandler(SandboxAPIHandler):
    """``GET`` the state, ``POST`` to start (idempotent), ``DELETE`` to stop."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """The sandbox's state: stopped, starting (with progress), running, failed."""
        ws = await self.owned_workspace(workspace_id)
        model = self.sandboxes.model(await self.sandboxes.current(ws))
        self.finish_json({**model, "not_synced": await self.sandboxes.unsynced(ws)})

    @web.authenticated
    async def post(self, workspace_id: str) -> None:
        """Start the sandbox unless it runs; answer once it is running."""
        ws = await self.owned_workspace(workspace_id)
        row = await self.sandboxes.ensure_running(ws)
        self.finish_json(self.sandboxes.model(row))

    @web.authenticated
    async def delete(self, workspace_id: str) -> None:
        """Stop the sandbox (files are safe in PostgreSQL)."""
        ws = await self.owned_workspace(workspace_id)
        await self.sandboxes.stop(ws)
        self.set_status(204)
        self.finish()


class SandboxProgressHandler(SandboxAPIHandler):
    """``GET .../sandbox/progress``: Server-Sent Events while the sandbox starts."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """Stream ``{progress, message, ready, failed}`` until it is running or failed.

        It may be opened before the start request: until then the sandbox reads as stopped.
        """
        ws = await self.owned_workspace(workspace_id)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        deadline = time.monotonic() + self.sandboxes.start_timeout + 30
        last = None
        while time.monotonic() < deadline:
            model = self.sandboxes.model(await self.sandboxes.row(ws))
            event = {
                "progress": model["progress"],
                "message": model["message"],
                "ready": model["state"] == "running",
                "failed": model["state"] == "failed",
                "reason": model["reason"],
            }
            if event != last:
                try:
                    self.write(f"data: {json.dumps(event)}\n\n")
                    await self.flush()
                except StreamClosedError:
                    return
                last = event
            if model["state"] in {"running", "failed"}:
                break
            await asyncio.sleep(PROGRESS_POLL)
        self.finish()


default_handlers = [
    (r"/api/workspaces/([^/]+)/sandbox", SandboxHandler),
    (r"/api/workspaces/([^/]+)/sandbox/progress", SandboxProgressHandler),
]
