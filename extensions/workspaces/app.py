"""``WorkspacesApp``: the workspaces extension's wiring into the server."""

from __future__ import annotations

from typing import cast

from jupyter_server.extension.application import ExtensionApp

from extensions.workspaces.handlers import default_handlers
from extensions.workspaces.jupyter_handlers import workspace_routes
from extensions.workspaces.manager import Workspaces
from extensions.workspaces.member_handlers import default_handlers as member_handlers
from extensions.workspaces.members import Members
from extensions.workspaces.search import WorkspaceSearch
from extensions.workspaces.search_handlers import default_handlers as search_handlers
from platform_server.app import PlatformApp


class WorkspacesApp(ExtensionApp):
    """Workspaces (``/api/workspaces``) and their files through the Jupyter Contents API."""

    name = "workspaces"
    load_other_extensions = True

    def initialize_settings(self) -> None:
        """Share the ``Workspaces`` service with the handlers."""
        platform = cast(PlatformApp, self.serverapp)
        self.settings["workspaces"] = Workspaces(parent=self, db=platform.db)
        self.settings["workspace_search"] = WorkspaceSearch(parent=self, db=platform.db)
        self.settings["workspace_members"] = Members(parent=self, db=platform.db)

    def initialize_handlers(self) -> None:
        """Register the REST handlers and the per-workspace Jupyter routes."""
        self.handlers.extend(default_handlers)
        self.handlers.extend(search_handlers)
        self.handlers.extend(member_handlers)
        self.handlers.extend(workspace_routes())
