"""``IdeApp``: the IDE extension's wiring into the server."""

from __future__ import annotations

from pathlib import Path

from jupyter_server.extension.application import ExtensionApp
from traitlets import Unicode, default

import platform_server
from extensions.ide.assets import AssetManifest, AssetsMissing
from extensions.ide.handlers import ASSETS_SETTING, default_handlers


class IdeApp(ExtensionApp):
    """The browser IDE's pages and static assets."""

    name = "ide"
    load_other_extensions = True

    static_dir = Unicode(
        help="Folder of the built front end (esbuild's output with manifest.json). "
        "Default: platform_server/static, where `make install` builds it.",
    ).tag(config=True)

    @default("static_dir")
    def _default_static_dir(self) -> str:
        return str(Path(platform_server.__file__).parent / "static")

    def initialize_settings(self) -> None:
        """Share the asset manifest with the handlers; warn early if nothing is built."""
        assets = AssetManifest(Path(self.static_dir))
        try:
            assets.load()
        except AssetsMissing as e:
            self.log.warning("ide | %s", e)
        self.settings[ASSETS_SETTING] = assets

    def initialize_handlers(self) -> None:
        """Register the pages and the assets."""
        self.handlers.extend(default_handlers)
