"""REST handlers of ``/api/workspaces``."""

from __future__ import annotations

import uuid
from typing import cast

from tornado import web

from extensions.accounts.identity import authenticated_user
from extensions.workspaces.manager import Workspaces, is_user_action
from extensions.workspaces.roles import Access, Action
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

    async def workspace_access(self, workspace_id: str, action: Action) -> Access:
        """The caller's access to the URL's workspace if it allows ``action``: 404 when they
        have no role in it, 403 when their role is too low. Writes count as the workspace's
        activity, reads do not (clients poll)."""
        return await self.workspaces.access(
            workspace_id,
            self.user_id,
            action,
            active=is_user_action(self.request.method or "GET"),
        )

    async def workspace_for(self, workspace_id: str, action: Action) -> uuid.UUID:
        """The URL's workspace id, if the caller may perform ``action`` in it (see
        ``workspace_access``)."""
        return (await self.workspace_access(workspace_id, action)).workspace_id


class WorkspaceListHandler(WorkspacesAPIHandler):
    """``GET/POST /api/workspaces``."""

    @web.authenticated
    async def get(self) -> None:
        """The caller's workspaces and the ones shared with them, most recently active
        first."""
        rows = await self.workspaces.reachable_by(self.user_id)
        self.finish_json([self.workspaces.model(row) for row in rows])

    @web.authenticated
    async def post(self) -> None:
        """Create a workspace ``{name}``."""
        body = self.read_json(frozenset({"name"}))
        workspace = await self.workspaces.create(self.user_id, body)
        self.set_header("Location", f"{self.base_url}api/workspaces/{workspace['id']}")
        self.finish_json(self.workspaces.model(workspace), status=201)


class WorkspaceHandler(WorkspacesAPIHandler):
    """``GET/PATCH/DELETE /api/workspaces/<uuid>``; a workspace the caller has no role in is
    404."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """One workspace."""
        workspace = await self.workspaces.get(workspace_id, self.user_id)
        self.finish_json(self.workspaces.model(workspace))

    @web.authenticated
    async def patch(self, workspace_id: str) -> None:
        """Rename a workspace ``{name}`` (an editor may)."""
        access = await self.workspace_access(workspace_id, Action.CHANGE)
        body = self.read_json(frozenset({"name"}))
        workspace = await self.workspaces.update(access, body)
        self.finish_json(self.workspaces.model(workspace))

    @web.authenticated
    async def delete(self, workspace_id: str) -> None:
        """Delete a workspace with all its files (its owner only)."""
        await self.workspaces.delete(await self.workspace_access(workspace_id, Action.DELETE))
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/api/workspaces", WorkspaceListHandler),
    (r"/api/workspaces/([^/]+)", WorkspaceHandler),
]
