"""REST handlers of ``/api/workspaces/<uuid>/members``: sharing a workspace."""

from __future__ import annotations

from typing import cast
from urllib.parse import quote

from tornado import web

from extensions.workspaces.handlers import WorkspacesAPIHandler
from extensions.workspaces.members import Members
from extensions.workspaces.roles import Action


class MembersAPIHandler(WorkspacesAPIHandler):
    """Base: the members service."""

    @property
    def members(self) -> Members:
        """The members service."""
        return cast(Members, self.settings["workspace_members"])


class MemberListHandler(MembersAPIHandler):
    """``GET`` the owner and members (any of them may); ``POST`` shares (the owner)."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """``[{username, role, added_at}]``, the owner first."""
        access = await self.workspace_access(workspace_id, Action.READ)
        self.finish_json(await self.members.listing(access))

    @web.authenticated
    async def post(self, workspace_id: str) -> None:
        """Share the workspace with a user: ``{username, role}``; 201 and the member."""
        access = await self.workspace_access(workspace_id, Action.SHARE)
        body = self.read_json(frozenset({"username", "role"}))
        member = await self.members.add(access, body)
        location = f"{self.base_url}api/workspaces/{access.workspace_id}/members/"
        self.set_header("Location", location + quote(member["username"], safe=""))
        self.finish_json(member, status=201)


class MemberHandler(MembersAPIHandler):
    """``PATCH`` a member's role (the owner); ``DELETE`` a member (the owner, or the member
    themselves: leaving)."""

    @web.authenticated
    async def patch(self, workspace_id: str, username: str) -> None:
        """Change the member's role: ``{role}``."""
        access = await self.workspace_access(workspace_id, Action.SHARE)
        body = self.read_json(frozenset({"role"}))
        self.finish_json(await self.members.change(access, username, body))

    @web.authenticated
    async def delete(self, workspace_id: str, username: str) -> None:
        """Remove the member (their open sockets to the workspace close at once)."""
        access = await self.workspace_access(workspace_id, Action.READ)
        await self.members.remove(access, username)
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/api/workspaces/([^/]+)/members", MemberListHandler),
    (r"/api/workspaces/([^/]+)/members/([^/]+)", MemberHandler),
]
