"""``TerminalsApp``: the terminals extension's wiring into the server."""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp

from extensions.terminals import handlers, proxy
from extensions.terminals.manager import Terminals


class TerminalsApp(ExtensionApp):
    """``/w/<uuid>/api/terminals`` and the terminal WebSocket, backed by sandbox agents."""

    name = "terminals"
    load_other_extensions = True

    def initialize_settings(self) -> None:
        """Make the ``Terminals`` service (``PlatformApp.wire_services`` gives it the
        sandboxes)."""
        self.settings["terminals"] = Terminals(parent=self)

    def initialize_handlers(self) -> None:
        """Register the REST handlers and the WebSocket relay."""
        self.handlers.extend(handlers.default_handlers)
        self.handlers.extend(proxy.default_handlers)
