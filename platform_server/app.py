"""``PlatformApp``: jupyter_server's ServerApp narrowed to the platform, and the command."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import uvloop
from jupyter_server.base.handlers import (
    APIVersionHandler,
    FileFindHandler,
    PrometheusMetricsHandler,
    PublicStaticFileHandler,
    TrailingSlashHandler,
)
from jupyter_server.serverapp import ServerApp
from jupyter_server.services.api.handlers import (
    APISpecHandler,
    APIStatusHandler,
    IdentityHandler,
)
from jupyter_server.services.security.handlers import CSPReportHandler
from traitlets import Float, Integer, Unicode, default

from platform_server import __version__, redact
from platform_server.body_limit import PlatformWebApplication
from platform_server.db import Database
from platform_server.db.embedded import EmbeddedPostgres, in_daemon_thread
from platform_server.db.migrate import apply_migrations
from platform_server.db.secrets import load_or_create_secret
from platform_server.handlers import (
    DB_SETTING,
    EMBEDDED_DB_SETTING,
    NotFoundHandler,
    PlatformIdentityHandler,
)
from platform_server.open_files import raise_open_files_limit

# The platform's own server extensions (jupyter_server loads them in name order).
PLATFORM_EXTENSIONS = (
    "extensions.accounts",
    "extensions.workspaces",
    "extensions.sandboxes",
    "extensions.terminals",
    "extensions.kernels",
    "extensions.language_servers",
    "extensions.collaboration",
    "extensions.ide",
)

# jupyter_server's own handlers that stay in the URL table: none of them serves the server's
# disk (beyond jupyter_server's packaged static files) or reaches its processes. Every other
# route jupyter_server adds by itself (the contents manager's root /files/, /api/resolvePath,
# the default page, its HTML 404) is removed, whatever service or manager added it.
KEPT_JUPYTER_HANDLERS: frozenset[type[Any]] = frozenset(
    {
        FileFindHandler,
        PublicStaticFileHandler,
        TrailingSlashHandler,
        APIVersionHandler,
        PrometheusMetricsHandler,
        APISpecHandler,
        APIStatusHandler,
        CSPReportHandler,
    }
)
# jupyter_server's handlers served by a platform subclass instead.
REPLACED_JUPYTER_HANDLERS: dict[type[Any], type[Any]] = {IdentityHandler: PlatformIdentityHandler}
PLATFORM_PACKAGES = ("platform_server.", "extensions.")


def is_kept_handler(target: Any) -> bool:
    """Whether a route of jupyter_server's URL table stays: the platform's own handlers and
    ``KEPT_JUPYTER_HANDLERS``, compared by class (a subclass is another handler)."""
    if target in KEPT_JUPYTER_HANDLERS:
        return True
    return str(getattr(target, "__module__", "")).startswith(PLATFORM_PACKAGES)


# Seconds a shutdown step still gets once shutdown_timeout is spent, so that the embedded
# PostgreSQL is at least told to stop; and after which a process whose shutdown is stuck
# outside the steps' reach (a blocked event loop) exits anyway.
STEP_GRACE = 0.5
EXIT_GRACE = 3.0


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

    shutdown_timeout = Float(
        10.0,
        help="Seconds that shutdown (extensions' stop hooks, closing the database pool, "
        "stopping the embedded PostgreSQL) may take; what is still running then is abandoned, "
        "logged, and the process exits. 0 waits without limit.",
    ).tag(config=True)

    max_request_body_size = Integer(
        64 * 1024,
        help="Bytes of request body accepted on every route except authenticated uploads "
        "through the contents API (those keep ServerApp.max_body_size); a larger body is "
        "refused with 413 before it is read, and before authentication. 0 disables this limit.",
    ).tag(config=True)

    db: Database
    embedded_db: EmbeddedPostgres | None = None
    _supervisor: asyncio.Task[None] | None = None
    _extensions_stopping: set[str]

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

    @default("reraise_server_extension_failures")
    def _default_reraise_server_extension_failures(self) -> bool:
        # Jupyter logs an extension that fails and serves on without it; a platform missing
        # its sandboxes or accounts must not answer as if healthy.
        return True

    def init_logging(self) -> None:
        """jupyter_server's logging, with secrets (tokens, ``_xsrf``, credential headers)
        scrubbed from every record of the process, tracebacks included (``redact``)."""
        redact.install()
        super().init_logging()

    def find_server_extensions(self) -> None:
        """Load only the platform's extensions, never whatever else is installed.

        Stock extensions such as jupyter_server_terminals enable themselves through config
        files and would open root-level terminals on the host.
        """

    def start_database(self) -> str:
        """Start the embedded PostgreSQL if no URL is configured, migrate; return the URL."""
        conninfo = self.db_url
        if not conninfo:
            self.embedded_db = EmbeddedPostgres(Path(self.data_dir), parent=self, log=self.log)
            conninfo = self.embedded_db.start()
        apply_migrations(conninfo, self.log)
        return conninfo

    def init_configurables(self) -> None:
        """Connect to PostgreSQL before the identity provider and managers are made."""
        self.log.debug("Open descriptors allowed: %d", raise_open_files_limit())
        # Also home to jupyter's notebook-signature secret (JupyterApp.data_dir is this trait).
        # Only the platform's user may enter it (the embedded PostgreSQL's too, see there).
        data_dir = Path(self.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if data_dir.stat().st_uid == os.geteuid():
            data_dir.chmod(0o700)
        conninfo = self.start_database()
        if not self.trait_has_value("cookie_secret"):
            # Shared through the database, so a cookie signed by one replica is good on all.
            self.cookie_secret = load_or_create_secret(conninfo, "cookie_secret")
        self.db = Database(
            conninfo, max_size=self.db_pool_size, timeout=self.db_timeout, log=self.log
        )
        super().init_configurables()

    def load_server_extensions(self) -> None:
        """Load the extensions (each makes its own service), then wire the services together."""
        super().load_server_extensions()
        self.wire_services()

    def wire_services(self) -> None:
        """Hand each service the services it uses: the one place where services meet.

        Runs once every extension has made its service (in whatever order jupyter_server
        loaded them), before any extension's start hook and before the first request. The
        services are found by their names in the web application's settings, so this module
        imports none of the extensions (they depend on it, not the other way round).
        """
        services = self.web_app.settings
        sandboxes = services["sandboxes"]
        # Saves through the Contents API are mirrored into the workspace's running sandbox.
        services["workspaces"].listeners.append(sandboxes)
        services["terminals"].sandboxes = sandboxes
        services["kernels"].sandboxes = sandboxes

    def init_webapp(self) -> None:
        """Make the pool reachable from every handler; narrow jupyter_server's URL table."""
        super().init_webapp()
        self.web_app.settings[DB_SETTING] = self.db
        self.web_app.settings[EMBEDDED_DB_SETTING] = self.embedded_db
        self.remove_stock_routes()
        self.limit_request_bodies()

    def limit_request_bodies(self) -> None:
        """Refuse large bodies before they are read (``max_request_body_size``)."""
        # jupyter_server makes its web application itself; this class only adds the limit.
        self.web_app.__class__ = PlatformWebApplication
        assert isinstance(self.web_app, PlatformWebApplication)  # noqa: S101  (for mypy)
        self.web_app.max_request_body_size = self.max_request_body_size
        self.web_app.credentials_check = getattr(
            self.identity_provider, "request_has_credentials", None
        )

    def remove_stock_routes(self) -> None:
        """Drop every route of jupyter_server's own table that ``is_kept_handler`` refuses,
        serve ``REPLACED_JUPYTER_HANDLERS`` by their platform subclasses, and end the table
        with a JSON 404 (the extensions' routes are added later, before it).

        ``default_services`` alone is not enough: jupyter_server adds the contents manager's
        root ``/files/`` handler, the default page and ``/api/resolvePath`` by itself.
        """
        router = self.web_app.wildcard_router
        kept = []
        for rule in router.rules:
            rule.target = REPLACED_JUPYTER_HANDLERS.get(rule.target, rule.target)
            if is_kept_handler(rule.target):
                kept.append(rule)
            else:
                self.log.debug("not serving jupyter_server's route %s", rule.matcher)
        router.rules[:] = kept
        router.add_rules([(r"(.*)", NotFoundHandler)])

    async def _post_start(self) -> None:
        """Supervise the embedded PostgreSQL (restart it if it dies), start the extensions."""
        if self.embedded_db is not None:
            self._supervisor = asyncio.create_task(self.embedded_db.supervise(self.db.reconnect))
        await super()._post_start()  # type: ignore[no-untyped-call]

    def init_signal(self) -> None:
        """Ctrl-C (SIGINT) stops the platform cleanly, as SIGTERM does, terminal or not.

        jupyter_server asks "Shut down this Jupyter server?" on a terminal and, without one,
        lets SIGINT raise KeyboardInterrupt out of the event loop, which skips the extensions'
        stop hooks and the embedded PostgreSQL's clean stop (JupyterHub replaces it likewise).
        """
        super().init_signal()
        signal.signal(signal.SIGINT, self._signal_stop)

    def stop(self, from_signal: bool = False) -> None:
        """Stop serving and clean up; after a signal, the process ends even if that hangs."""
        if from_signal and self.shutdown_timeout > 0 and not self._stopping:
            threading.Thread(
                target=self._exit_if_stuck, name="shutdown-deadline", daemon=True
            ).start()
        super().stop(from_signal)

    def _exit_if_stuck(self) -> None:
        # _cleanup abandons what outlives shutdown_timeout; this ends what it cannot abandon
        # (an event loop blocked in a call, a thread that interpreter exit would wait for).
        time.sleep(self.shutdown_timeout + EXIT_GRACE)
        self.log.critical(
            "shutdown | still running %.1fs after the stop; exiting now",
            self.shutdown_timeout + EXIT_GRACE,
        )
        os._exit(1)

    async def cleanup_extensions(self) -> None:
        """Call every extension's stop hook at once, noting those not finished yet."""
        manager = getattr(self, "extension_manager", None)
        if manager is None:
            return
        self._extensions_stopping = set()

        async def stop(name: str, apps: Any) -> None:
            self._extensions_stopping.add(name)
            await manager.stop_extension(name, apps)
            self._extensions_stopping.discard(name)

        self.log.info("shutdown | stopping %d extensions", len(manager.extension_apps))
        await asyncio.gather(*(stop(n, a) for n, a in sorted(manager.extension_apps.items())))

    async def _cleanup(self) -> None:
        """Stop the extensions, close the pool, stop the embedded PostgreSQL, all within
        ``shutdown_timeout``: a step still running then (a stop hook waiting on a database that
        does not answer) is abandoned and logged, and the next step begins."""
        if self._supervisor is not None:
            self._supervisor.cancel()
        loop = asyncio.get_running_loop()
        started = loop.time()
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("stopping extensions", super()._cleanup),
            ("closing the database pool", self._close_database),
            ("stopping the embedded PostgreSQL", self._stop_embedded_database),
        ]
        abandoned = []
        for what, step in steps:
            task = asyncio.ensure_future(step())
            timeout = None
            if self.shutdown_timeout > 0:
                timeout = max(started + self.shutdown_timeout - loop.time(), STEP_GRACE)
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                pending = sorted(getattr(self, "_extensions_stopping", ()))
                if what == "stopping extensions" and pending:
                    what = f"{what} ({', '.join(pending)})"
                abandoned.append(what)
            elif task.exception() is not None:
                self.log.error("shutdown | %s failed", what, exc_info=task.exception())
        if abandoned:
            self.log.warning(
                "shutdown | abandoned after %.1fs: %s", loop.time() - started, "; ".join(abandoned)
            )

    async def _close_database(self) -> None:
        if hasattr(self, "db"):
            await self.db.close()

    async def _stop_embedded_database(self) -> None:
        # In a daemon thread: pg_ctl waits up to a minute for a server that does not answer.
        await in_daemon_thread(self.stop_embedded_database, "embedded-postgres-stop")

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
