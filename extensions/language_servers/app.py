"""``LanguageServersApp``: the language servers extension's wiring into the server."""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp

from extensions.language_servers import handlers


class LanguageServersApp(ExtensionApp):
    """``/w/<uuid>/lsp/status`` and the ``/w/<uuid>/lsp/ws/<server>`` relay to the agent."""

    name = "language_servers"
    load_other_extensions = True

    def initialize_handlers(self) -> None:
        """Register the status handler and the WebSocket relay."""
        self.handlers.extend(handlers.default_handlers)
