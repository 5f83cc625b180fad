"""``CollaborationApp``: the collaboration extension's wiring into the server."""

from __future__ import annotations

from typing import Any, cast

from jupyter_server.extension.application import ExtensionApp

from extensions.collaboration.handlers import default_handlers
from extensions.collaboration.rooms import Collaboration
from platform_server.app import PlatformApp


class CollaborationApp(ExtensionApp):
    """Shared text documents (``WS /w/<uuid>/api/collaboration/text/<path>``)."""

    name = "collaboration"
    load_other_extensions = True

    def initialize_settings(self) -> None:
        """Make the ``Collaboration`` service; its workspaces and file events are handed to it
        in ``_start_jupyter_server_extension``, once every extension made its service."""
        platform = cast(PlatformApp, self.serverapp)
        self.settings["collaboration"] = Collaboration(parent=self, db=platform.db, log=self.log)

    def initialize_handlers(self) -> None:
        """Register the WebSocket handler."""
        self.handlers.extend(default_handlers)

    @property
    def collaboration(self) -> Collaboration:
        """The collaboration service."""
        return cast(Collaboration, self.settings["collaboration"])

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Start listening to the other replicas."""
        settings = cast(PlatformApp, self.serverapp).web_app.settings
        self.collaboration.workspaces = settings["workspaces"]
        self.collaboration.file_events = settings["sandboxes"].events
        self.collaboration.start()

    async def stop_extension(self) -> None:
        """Save and close every open document, stop listening."""
        await self.collaboration.stop()
