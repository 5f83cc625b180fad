"""``KernelsApp``: the kernels extension's wiring into the server."""

from __future__ import annotations

from typing import cast

from jupyter_server.extension.application import ExtensionApp

from extensions.kernels import handlers, proxy
from extensions.kernels.manager import Kernels
from extensions.kernels.sessions import Sessions
from platform_server.app import PlatformApp


class KernelsApp(ExtensionApp):
    """``/w/<uuid>/api/{kernelspecs,kernels,sessions}`` and the kernel channels relay."""

    name = "kernels"
    load_other_extensions = True

    def initialize_settings(self) -> None:
        """Make the ``Kernels`` and ``Sessions`` services (``PlatformApp.wire_services``
        gives ``Kernels`` the sandboxes)."""
        platform = cast(PlatformApp, self.serverapp)
        kernels = Kernels(parent=self)
        self.settings["kernels"] = kernels
        self.settings["kernel_sessions"] = Sessions(parent=self, db=platform.db, kernels=kernels)

    def initialize_handlers(self) -> None:
        """Register the REST handlers and the WebSocket relay."""
        self.handlers.extend(handlers.default_handlers)
        self.handlers.extend(proxy.default_handlers)
