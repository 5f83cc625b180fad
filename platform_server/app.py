"""``PlatformApp``: jupyter_server's ServerApp narrowed to the platform, and the command."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, ClassVar

import uvloop
from jupyter_server.serverapp import ServerApp
from traitlets import Float, Integer, Unicode, default

from platform_server import __version__
from platform_server.db import Database
from platform_server.db.embedded import EmbeddedPostgres
from platform_server.db.migrate import apply_migrations
from platform_server.db.secrets import load_or_create_secret
from platform_server.handlers import DB_SETTING

# The platform's own server extensions (jupyter_server loads them in name order).
PLATFORM_EXTENSIONS = (
    "extensions.accounts",
    "extensions.workspaces",
    "extensions.sandboxes",
    "extensions.terminals",
    "extensions.kernels",
    "extensions.ide",
)


class PlatformApp(ServerApp):
    """The platform server: accounts, workspaces and sandboxes on Jupyter Server.

    Only services that cannot reach the server's own disk or processes are kept; every
    workspace-facing Jupyter API is served per workspace by the platform's extensions.
    """

    name = "platform-server"
    version = __version__
    description = "A multi-user browser IDE and Jupyter-compatible gateway."

    # No root-level contents, files, kernels, sessions, nbconvert, config (which writes the
    # server's config files), events (server-wide), shutdown or the default pages.
    default_services = ("api", "auth", "security")  # type: ignore[assignment]

    subcommands: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        "create-user": (
            "extensions.accounts.cli.CreateUserApp",
            "Create a user (with --admin, an administrator); the password is read from a "
            "prompt or from standard input.",
        ),
    }

    db_url = Unicode(
        help="PostgreSQL connection URL. Default: $DATABASE_URL; when that is unset too, an "
        "embedded PostgreSQL server runs in data_dir.",
    ).tag(config=True)

    data_dir = Unicode(
        help="Folder of the platform's local state (the embedded PostgreSQL's files).",
    ).tag(config=True)

    db_pool_size = Integer(10, help="Most connections this process keeps open to PostgreSQL.").tag(
        config=True
    )

    db_timeout = Float(
        5.0,
        help="Seconds a request waits for a database connection before it is answered with 503.",
    ).tag(config=True)

    db: Database
    embedded_db: EmbeddedPostgres | None = None

    @default("db_url")
    def _default_db_url(self) -> str:
        return os.environ.get("DATABASE_URL", "")

    @default("data_dir")
    def _default_data_dir(self) -> str:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return str(Path(base) / "platform-server")

    @default("jpserver_extensions")
    def _default_jpserver_extensions(self) -> dict[str, bool]:
        return dict.fromkeys(PLATFORM_EXTENSIONS, True)

    @default("extra_services")
    def _default_extra_services(self) -> list[str]:
        return ["platform_server.handlers"]

    @default("identity_provider_class")
    def _default_identity_provider_class(self) -> str:
        return "extensions.accounts.identity.PlatformIdentityProvider"

    @default("authorizer_class")
    def _default_authorizer_class(self) -> str:
        return "extensions.accounts.identity.PlatformAuthorizer"

    @default("allow_root")
    def _default_allow_root(self) -> bool:
        # Jupyter refuses root because kernels would run as root; here user code only ever
        # runs in sandboxes, as an unprivileged user.
        return True

    @default("open_browser")
    def _default_open_browser(self) -> bool:
        return False

    def find_server_extensions(self) -> None:
        """Load only the platform's extensions, never whatever else is installed.

        Stock extensions such as jupyter_server_terminals enable themselves through config
        files and would open root-level terminals on the host.
        """

    def start_database(self) -> str:
        """Start the embedded PostgreSQL if no URL is configured, migrate; return the URL."""
        conninfo = self.db_url
        if not conninfo:
            self.embedded_db = EmbeddedPostgres(Path(self.data_dir), self.log)
            conninfo = self.embedded_db.start()
        apply_migrations(conninfo, self.log)
        return conninfo

    def init_configurables(self) -> None:
        """Connect to PostgreSQL before the identity provider and managers are made."""
        # Also home to jupyter's notebook-signature secret (JupyterApp.data_dir is this trait).
        Path(self.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        conninfo = self.start_database()
        if not self.trait_has_value("cookie_secret"):
            # Shared through the database, so a cookie signed by one replica is good on all.
            self.cookie_secret = load_or_create_secret(conninfo, "cookie_secret")
        self.db = Database(
            conninfo, max_size=self.db_pool_size, timeout=self.db_timeout, log=self.log
        )
        super().init_configurables()

    def init_webapp(self) -> None:
        """Make the pool reachable from every handler."""
        super().init_webapp()
        self.web_app.settings[DB_SETTING] = self.db

    async def _cleanup(self) -> None:
        await super()._cleanup()
        if hasattr(self, "db"):
            await self.db.close()
        self.stop_embedded_database()

    def stop_embedded_database(self) -> None:
        """Stop the embedded PostgreSQL, if this process started one."""
        if self.embedded_db is not None:
            self.embedded_db.stop()
            self.embedded_db = None


def main(argv: list[str] | None = None) -> None:
    """The ``platform-server`` command, on uvloop: every relayed WebSocket frame and database
    round trip costs a turn of the event loop, which uvloop makes cheaper (a terminal's
    keystroke echo is ~10% faster)."""
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    PlatformApp.launch_instance(argv)


launch_new_instance = main
