"""``/w/<uuid>/api/terminals``: jupyter_server's terminal REST API, per workspace."""

from __future__ import annotations

from typing import Any, cast

from tornado import web

from extensions.terminals.manager import Terminals
from extensions.workspaces.handlers import WorkspacesAPIHandler
from extensions.workspaces.roles import Action
from platform_server.handlers import WORKSPACE_ROUTE, parse_json_object


class TerminalsAPIHandler(WorkspacesAPIHandler):
    """Base: the services, and the role check of the URL's workspace."""

    auth_resource = "terminals"

    @property
    def terminals(self) -> Terminals:
        """The terminals service."""
        return cast(Terminals, self.settings["terminals"])

    def body_options(self) -> dict[str, Any]:
        """The optional JSON body, as JupyterLab sends it (with or without a content type)."""
        return parse_json_object(self.request.body) or {}


class TerminalRootHandler(TerminalsAPIHandler):
    """``GET`` lists, ``POST`` opens a terminal (starting the sandbox if needed)."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """The workspace's terminals."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        self.finish_json(await self.terminals.running(ws))

    @web.authenticated
    async def post(self, workspace_id: str) -> None:
        """Open a terminal: ``{"name": "1", "last_activity": ...}``."""
        access = await self.workspace_access(workspace_id, Action.CHANGE)
        # The owner's: the cap on running sandboxes is theirs, whoever opens the terminal.
        model = await self.terminals.create(
            access.workspace_id, access.owner_id, self.body_options()
        )
        self.finish_json(model)


class TerminalHandler(TerminalsAPIHandler):
    """``GET``/``DELETE`` one terminal."""

    @web.authenticated
    async def get(self, workspace_id: str, name: str) -> None:
        """One terminal's model."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        self.finish_json(await self.terminals.get(ws, name))

    @web.authenticated
    async def delete(self, workspace_id: str, name: str) -> None:
        """Close the terminal."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        await self.terminals.delete(ws, name)
        self.set_status(204)
        self.finish()


default_handlers = [
    (rf"{WORKSPACE_ROUTE}/api/terminals", TerminalRootHandler),
    (rf"{WORKSPACE_ROUTE}/api/terminals/(?P<name>[^/]+)", TerminalHandler),
]
