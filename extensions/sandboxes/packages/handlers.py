"""``/api/workspaces/<uuid>/packages``: what a workspace installed (what every new sandbox of
it installs again), and forgetting one."""

from __future__ import annotations

from tornado import web

from extensions.sandboxes.handlers import SandboxAPIHandler
from extensions.sandboxes.packages import store
from extensions.sandboxes.packages.index import normalize
from extensions.workspaces.roles import Action
from platform_server.errors import NotFound


class PackagesHandler(SandboxAPIHandler):
    """``GET``: ``[{name, version, source}]``, by name."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """The workspace's recorded packages."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        async with self.sandboxes.db.connection() as conn:
            rows = await store.recorded(conn, ws)
        self.finish_json(
            [
                {"name": r["display_name"], "version": r["version"], "source": r["source"]}
                for r in rows
            ]
        )


class PackageHandler(SandboxAPIHandler):
    """``DELETE``: forget one package (a running sandbox keeps it until it stops)."""

    @web.authenticated
    async def delete(self, workspace_id: str, name: str) -> None:
        """Forget it: the next sandbox does not install it again."""
        ws = await self.workspace_for(workspace_id, Action.CHANGE)
        async with self.sandboxes.db.transaction() as conn:
            if not await store.forget(conn, ws, normalize(name)):
                raise NotFound(f"The workspace has no recorded package {name!r}.").to_http()
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/api/workspaces/([^/]+)/packages", PackagesHandler),
    (r"/api/workspaces/([^/]+)/packages/([^/]+)", PackageHandler),
]
