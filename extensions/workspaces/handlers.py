"""REST handlers of ``/api/workspaces``."""

from __future__ import annotations

import uuid
from typing import cast

from tornado import web

from extensions.accounts.identity import authenticated_user
from extensions.workspaces.manager import Workspaces, is_user_action
from platform_server.handlers import PlatformAPIHandler


class WorkspacesAPIHandler(PlatformAPIHandler):
    """Base of every handler of a workspace's resources (here, and in the extensions that build
    on workspaces: sandboxes, terminals, kernels)."""

    @property
    def workspaces(self) -> Workspaces:
        """The workspaces service."""
        return cast(Workspaces, self.settings["workspaces"])

    @property
    def user_id(self) -> int:
        """The caller's account id."""
        return authenticated_user(self).user_id

    async def owned_workspace(self, workspace_id: str) -> uuid.UUID:
        """The URL's workspace if the caller owns it (404 otherwise); writes count as the
        user's activity, reads do not (clients poll)."""
        return await self.workspaces.touch(
            workspace_id, self.user_id, active=is_user_action(self.request.method or "GET")
        )


class WorkspaceListHandler(WorkspacesAPIHandler):
    """``GET/POST /api/workspaces``."""

    @web.authenticated
    async def get(self) -> None:
        """The caller's workspaces, most recently active first."""
        rows = await self.workspaces.owned_by(self.user_id)
        self.finish_json([self.workspaces.model(row) for row in rows])

    @web.authenticated
    async def post(self) -> None:
        """Create a workspace ``{name}``."""
        body = self.read_json(frozenset({"name"}))
        workspace = await self.workspaces.create(self.user_id, body)
        self.set_header("Location", f"{self.base_url}api/workspaces/{workspace['id']}")
        self.finish_json(self.workspaces.model(workspace), status=201)


class WorkspaceHandler(WorkspacesAPIHandler):
    """``GET/PATCH/DELETE /api/workspaces/<uuid>``; another user's workspace is 404."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """One workspace."""
        workspace = await self.workspaces.get(workspace_id, self.user_id)
        self.finish_json(self.workspaces.model(workspace))

    @web.authenticated
    async def patch(self, workspace_id: str) -> None:
        """Rename a workspace ``{name}``."""
        body = self.read_json(frozenset({"name"}))
        workspace = await self.workspaces.update(workspace_id, self.user_id, body)
        self.finish_json(self.workspaces.model(workspace))

    @web.authenticated
    async def delete(self, workspace_id: str) -> None:
        """Delete a workspace with all its files."""
        await self.workspaces.delete(workspace_id, self.user_id)
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/api/workspaces", WorkspaceListHandler),
    (r"/api/workspaces/([^/]+)", WorkspaceHandler),
]
