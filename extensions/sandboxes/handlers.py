"""REST handlers of ``/api/workspaces/<uuid>/sandbox``."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import cast

from tornado import web
from tornado.iostream import StreamClosedError

from extensions.accounts.identity import PlatformUser
from extensions.sandboxes.errors import SandboxUnresponsive
from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.store import SandboxRow
from extensions.workspaces.handlers import WorkspacesAPIHandler
from extensions.workspaces.manager import Workspaces
from extensions.workspaces.roles import Access, Action
from platform_server.errors import DomainError, NotFound
from platform_server.handlers import unauthenticated

PROGRESS_POLL = 0.2


async def socket_access(
    handler: web.RequestHandler, workspace_id: str, action: Action, *, active: bool = True
) -> Access:
    """The caller's access to the URL's workspace for a WebSocket handler: 401 without a
    user, 404 when they have no role in it, 403 when it does not allow ``action`` (raised
    before the upgrade, as HTTP answers)."""
    user = handler.current_user
    if not isinstance(user, PlatformUser):
        raise unauthenticated()
    workspaces = cast(Workspaces, handler.settings["workspaces"])
    try:
        return await workspaces.access(workspace_id, user.user_id, action, active=active)
    except DomainError as e:
        raise e.to_http() from e


async def socket_workspace(
    handler: web.RequestHandler, workspace_id: str, *, active: bool = True
) -> uuid.UUID:
    """The URL's workspace id for a WebSocket that any role may open (``socket_access``
    with ``Action.READ``); a socket whose messages change things needs ``socket_access``."""
    access = await socket_access(handler, workspace_id, Action.READ, active=active)
    return access.workspace_id


async def running_sandbox(handler: web.RequestHandler, access: Access, missing: str) -> SandboxRow:
    """The running sandbox of the workspace, for a relay to its agent; 404 with ``missing``
    when it is not running, ``SandboxUnresponsive`` when it does not answer."""
    row = await cast(Sandboxes, handler.settings["sandboxes"]).row(access.workspace_id)
    if row is not None and row["state"] == "unresponsive":
        raise SandboxUnresponsive
    if row is None or row["state"] != "running":
        raise NotFound(missing).to_http()
    return row


class SandboxAPIHandler(WorkspacesAPIHandler):
    """Base: the services, and the role check of the URL's workspace."""

    @property
    def sandboxes(self) -> Sandboxes:
        """The sandboxes service."""
        return cast(Sandboxes, self.settings["sandboxes"])


class SandboxHandler(SandboxAPIHandler):
    """``GET`` the state, ``POST`` to start (idempotent), ``DELETE`` to stop."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """The sandbox's state: stopped, starting (with progress), running, unresponsive,
        failed."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        model = self.sandboxes.model(await self.sandboxes.current(ws))
        self.finish_json({**model, "not_synced": await self.sandboxes.unsynced(ws)})

    @web.authenticated
    async def post(self, workspace_id: str) -> None:
        """Start the sandbox unless it runs; answer once it is running (a viewer may: it runs
        no user code, and lets them watch terminals and kernels)."""
        ws = await self.workspace_for(workspace_id, Action.START)
        row = await self.sandboxes.ensure_running(ws)
        self.finish_json(self.sandboxes.model(row))

    @web.authenticated
    async def delete(self, workspace_id: str) -> None:
        """Stop the sandbox (files are safe in PostgreSQL)."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        await self.sandboxes.stop(ws)
        self.set_status(204)
        self.finish()


class SandboxListHandler(SandboxAPIHandler):
    """``GET /api/sandboxes``: the state of every sandbox of the workspaces the caller owns or
    is a member of, at once (a workspace list shows them without a request per workspace)."""

    @web.authenticated
    async def get(self) -> None:
        """``[{workspace, state, ...}]`` as the rows say; workspaces without one are stopped.
        A member may read each shared workspace's sandbox on its own route: listed here too."""
        reachable = await self.workspaces.reachable_by(self.user_id)
        rows = await self.sandboxes.for_workspaces([workspace["id"] for workspace in reachable])
        self.finish_json(
            [{"workspace": str(row["workspace_id"]), **self.sandboxes.model(row)} for row in rows]
        )


class SandboxProgressHandler(SandboxAPIHandler):
    """``GET .../sandbox/progress``: Server-Sent Events while the sandbox starts."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """Stream ``{progress, message, ready, failed}`` until it is running or failed.

        It may be opened before the start request: until then the sandbox reads as stopped.
        """
        ws = await self.workspace_for(workspace_id, Action.READ)
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
    (r"/api/sandboxes", SandboxListHandler),
    (r"/api/workspaces/([^/]+)/sandbox", SandboxHandler),
    (r"/api/workspaces/([^/]+)/sandbox/progress", SandboxProgressHandler),
]
