"""The IDE's pages (``/``, ``/login``, ``/workspaces``, ``/w/<uuid>/``...) and assets."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Awaitable
from http.client import responses
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urljoin, urlsplit

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from extensions.accounts.identity import PlatformUser
from extensions.accounts.manager import Accounts
from extensions.ide.assets import AssetManifest, AssetsMissing, is_hashed
from extensions.ide.pages import content_security_policy, message_html, page_html
from extensions.workspaces.manager import Workspaces
from platform_server.errors import DatabaseUnavailable, NotFound, PlatformError
from platform_server.handlers import WORKSPACE_ROUTE

ASSETS_SETTING = "ide_assets"
# Which front-end bundle draws each page.
BUNDLES = {"login": "auth", "register": "auth"}
# Control characters (browsers drop tabs and newlines from URLs, so "/\t/evil.example" is
# "//evil.example" to them) and backslashes (read as "/" in http URLs).
UNSAFE_IN_NEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
# Any origin: a path resolved against it must stay on it.
PROBE_ORIGIN = "http://platform.invalid"


def safe_next(value: str | None) -> str | None:
    """A same-origin path to go to after logging in, or None (never another site).

    The login page's script applies the same rule (``safeNext`` in
    frontend/src/common/config.ts): a path that starts with "/", has no control character
    and no backslash, and that the URL parser resolves to the page's own origin.
    """
    if value is None or not value.startswith("/") or UNSAFE_IN_NEXT.search(value):
        return None
    try:
        resolved = urlsplit(urljoin(f"{PROBE_ORIGIN}/", value))
    except ValueError:  # "//[" is an unfinished IPv6 host
        return None
    if f"{resolved.scheme}://{resolved.netloc}" != PROBE_ORIGIN:
        return None
    return value


class PageHandler(JupyterHandler):
    """Base of the HTML pages: no caching, a strict CSP, errors as pages (not JSON)."""

    @property
    def assets(self) -> AssetManifest:
        """The built front end."""
        return cast(AssetManifest, self.settings[ASSETS_SETTING])

    @property
    def assets_url(self) -> str:
        """Where the hashed assets are served."""
        return f"{self.base_url}assets/"

    @property
    def content_security_policy(self) -> str:
        """Same origin only, plus what Monaco and xterm.js need."""
        return content_security_policy(self.request.host)

    def set_default_headers(self) -> None:
        """Pages change with every build: always revalidate them."""
        super().set_default_headers()
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Frame-Options", "DENY")

    @property
    def platform_user(self) -> PlatformUser | None:
        """The logged-in user, if any."""
        user = self.current_user
        return user if isinstance(user, PlatformUser) else None

    def finish_page(self, page: str, title: str, config: dict[str, Any]) -> None:
        """Answer with the shell of a front-end page."""
        try:
            assets = self.assets.page(BUNDLES.get(page, page))
            workers = self.assets.load().workers
        except AssetsMissing as e:
            self.log.error("ide | %s", e)
            raise PlatformError(503, str(e), reason="assets_missing") from e
        data = {"page": page, "platformBaseUrl": self.base_url, "baseUrl": self.base_url, **config}
        if self.platform_user is not None:
            # Sets the _xsrf cookie again if it is missing or not this login's (planted).
            self.xsrf_token  # noqa: B018
        if page == "ide":
            data["workers"] = {label: self.assets_url + name for label, name in workers.items()}
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(page_html(title, assets, self.assets_url, data))

    def finish_message(self, status: int, title: str, message: str) -> None:
        """Answer with a page that only says something, and a way back."""
        try:
            css = self.assets.page("auth").css
        except (AssetsMissing, OSError, ValueError):
            css = None
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        if self.platform_user is not None:
            link = ("Back to your workspaces", f"{self.base_url}workspaces")
        else:
            link = ("Log in", f"{self.base_url}login")
        self.finish(message_html(title, message, *link, f"{self.assets_url}{css}" if css else None))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors of a page are pages, with the message in words."""
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, web.HTTPError) and error.log_message and status_code < 500:
            message = error.log_message
        elif status_code == 503:
            message = (
                error.log_message
                if isinstance(error, web.HTTPError) and error.log_message
                else "The service is unavailable for a moment: try again shortly."
            )
        elif status_code >= 500:
            message = "Something went wrong on the server; its log has the details."
        else:
            message = responses.get(status_code, "Error")
        title = "Page not found" if status_code == 404 else responses.get(status_code, "Error")
        self.finish_message(status_code, title, message)


class RootHandler(PageHandler):
    """``/``: the workspaces when logged in, the login page otherwise."""

    @allow_unauthenticated
    def get(self) -> None:
        """Redirect."""
        target = "workspaces" if self.platform_user is not None else "login"
        self.redirect(f"{self.base_url}{target}")


class AuthPageHandler(PageHandler):
    """``/login`` and ``/register``; a logged-in visitor goes straight on."""

    page = "login"
    title = "Log in"

    @allow_unauthenticated
    def get(self) -> None:
        """The form, or a redirect for someone already logged in."""
        if self.platform_user is not None:
            target = safe_next(self.get_argument("next", None))
            self.redirect(target or f"{self.base_url}workspaces")
            return
        accounts = cast(Accounts, self.settings["accounts"])
        self.finish_page(self.page, self.title, {"allowRegistration": accounts.allow_registration})


class LoginPageHandler(AuthPageHandler):
    """``/login``: where jupyter_server sends unauthenticated page requests (``login_url``)."""


class RegisterPageHandler(AuthPageHandler):
    """``/register``."""

    page = "register"
    title = "Create an account"


class WorkspacesPageHandler(PageHandler):
    """``/workspaces``: the user's workspaces."""

    @web.authenticated
    def get(self) -> None:
        """The page."""
        user = self.platform_user
        assert user is not None  # noqa: S101  (web.authenticated)
        self.finish_page("workspaces", "Workspaces", {"user": {"username": user.username}})


class IdePageHandler(PageHandler):
    """``/w/<uuid>/``: the IDE of one of the user's workspaces (404 for anyone else's)."""

    @web.authenticated
    async def get(self, workspace_id: str, slash: str) -> None:
        """The IDE page."""
        user = self.platform_user
        assert user is not None  # noqa: S101  (web.authenticated)
        if not slash:
            # Quoted again: tornado decoded it, and a control character cannot be a header.
            self.redirect(f"{self.base_url}w/{quote(workspace_id, safe='')}/")
            return
        workspaces = cast(Workspaces, self.settings["workspaces"])
        try:
            workspace = await workspaces.get(workspace_id, user.user_id)
        except NotFound:
            self.finish_message(
                404,
                "Workspace not found",
                "There is no such workspace among yours: it may have been deleted.",
            )
            return
        except DatabaseUnavailable as e:
            raise e.to_http() from e
        model = workspaces.model(workspace)
        self.finish_page(
            "ide",
            f"{model['name']} · Platform",
            {
                "baseUrl": f"{self.base_url}w/{model['uuid']}/",
                "terminalsAvailable": "true",
                "workspace": model,
                "user": {"username": user.username},
            },
        )


class AssetsHandler(web.StaticFileHandler):
    """``/assets/<name>``: hashed names are cached for a year; anything else revalidates.

    The build writes a gzip copy beside each large file; it is sent to browsers that accept it.
    """

    gzipped = False

    def initialize(self) -> None:  # type: ignore[override]
        """Serve the build folder."""
        super().initialize(path=str(cast(AssetManifest, self.settings[ASSETS_SETTING]).folder))

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        """The file, or its precompressed copy when the browser takes gzip."""
        valid = super().validate_absolute_path(root, absolute_path)
        accepted = self.request.headers.get("Accept-Encoding", "")
        packed = Path(f"{valid}.gz")
        if valid is not None and "gzip" in accepted and packed.is_file():
            self.gzipped = True
            # Size and dates come from this stat (tornado keeps the one of the plain file).
            self._stat_result = packed.stat()
            return str(packed)
        return valid

    def get_content_type(self) -> str:
        """The type of the file itself, not of its gzip copy."""
        assert self.absolute_path is not None  # noqa: S101  (set before headers)
        name = self.absolute_path.removesuffix(".gz") if self.gzipped else self.absolute_path
        return mimetypes.guess_type(name)[0] or "application/octet-stream"

    @allow_unauthenticated
    async def get(self, path: str, include_body: bool = True) -> None:
        """A file (the login page needs them before anyone is logged in)."""
        await super().get(path, include_body)

    @allow_unauthenticated
    def head(self, path: str) -> Awaitable[None]:
        """Headers of a file."""
        return super().head(path)

    def set_extra_headers(self, path: str) -> None:
        """Immutable when the name carries a content hash."""
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Vary", "Accept-Encoding")
        if self.gzipped:
            self.set_header("Content-Encoding", "gzip")
        if is_hashed(path):
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        else:
            self.set_header("Cache-Control", "no-cache")

    def get_cache_time(self, path: str, modified: Any, mime_type: str) -> int:
        """Tornado's own max-age: a year for hashed names, none otherwise."""
        return 31536000 if is_hashed(path) else 0


default_handlers = [
    (r"/", RootHandler),
    (r"/login", LoginPageHandler),
    (r"/register", RegisterPageHandler),
    (r"/workspaces", WorkspacesPageHandler),
    (rf"{WORKSPACE_ROUTE}(?P<slash>/?)", IdePageHandler),
    (r"/assets/(.*)", AssetsHandler),
]
