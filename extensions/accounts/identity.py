"""Who is making a request: jupyter_server's IdentityProvider and Authorizer for the platform."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User
from tornado import httputil, web
from tornado.escape import utf8
from traitlets import Instance, default

from extensions.accounts.manager import Accounts, Identity, KnownBrowser
from platform_server.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from jupyter_server.base.handlers import JupyterHandler

    from platform_server.app import PlatformApp


@dataclass
class PlatformUser(User):
    """jupyter_server's ``User``, carrying the platform identity behind it."""

    identity: Identity | None = field(default=None, repr=False, compare=False)

    @property
    def user_id(self) -> int:
        """The account's database id."""
        assert self.identity is not None  # noqa: S101  (always set by the identity provider)
        return self.identity.user["id"]

    @property
    def is_admin(self) -> bool:
        """Whether the account is an administrator."""
        return self.identity is not None and self.identity.is_admin


def authenticated_user(handler: web.RequestHandler) -> PlatformUser:
    """The user of a request that ``web.authenticated`` let through."""
    user = handler.current_user
    if not isinstance(user, PlatformUser) or user.identity is None:
        msg = "authenticated_user() called on an unauthenticated request"
        raise TypeError(msg)
    return user


KNOWN_BROWSER_COOKIE = "platform-browser"


def login_xsrf_token(cookie_secret: bytes | str, login_id: int) -> bytes:
    """The XSRF token of one login: an HMAC of its id under the cookie secret (16 bytes).

    Nobody can compute it without the secret, and it changes with every login, so an
    ``_xsrf`` cookie planted in a browser (from a sibling subdomain, or over plain HTTP) and a
    matching header never pass for that browser's login.
    """
    mac = hmac.new(utf8(cookie_secret), b"xsrf|login|%d" % login_id, hashlib.sha256)
    return mac.digest()[:16]


class PlatformIdentityProvider(IdentityProvider):
    """Authenticates requests by API token (header or ``?token=``) or by login cookie.

    Every check reads PostgreSQL, so a revoked login, a revoked token or a disabled user is
    refused at once by every replica.
    """

    accounts = Instance(Accounts)

    @default("accounts")
    def _default_accounts(self) -> Accounts:
        return Accounts(parent=self, db=cast("PlatformApp", self.parent).db)

    @default("token")
    def _default_token(self) -> str:
        # No shared server token: every token belongs to a user and lives in the database.
        return ""

    @default("cookie_name")
    def _default_cookie_name(self) -> str:
        return "platform-login"

    @property
    def login_available(self) -> bool:
        """The platform logs in through its own API, not jupyter_server's login page."""
        return False

    @property
    def logout_available(self) -> bool:
        """See ``login_available``."""
        return False

    async def get_user(self, handler: web.RequestHandler) -> PlatformUser | None:
        """The user a token or login cookie identifies, or None."""
        cached = getattr(handler, "_jupyter_current_user", None)
        if cached is not None:
            return cast(PlatformUser, cached)
        try:
            identity = await self._identify(handler)
        except DatabaseUnavailable as e:
            raise e.to_http() from e
        if identity is None:
            return None
        username = identity.user["username"]
        return PlatformUser(username=username, initials=username[:1].upper(), identity=identity)

    async def _identify(self, handler: web.RequestHandler) -> Identity | None:
        token = self.get_token(handler)
        if token:
            identity = await self.accounts.identity_for_token(token)
            if identity is not None:
                # Tells jupyter_server to skip XSRF and origin checks, as for its own tokens.
                handler._token_authenticated = True  # type: ignore[attr-defined]
                return identity
        secret = self.login_secret(handler)
        if secret is None:
            return None
        identity = await self.accounts.identity_for_login(secret)
        if identity is None:
            self.clear_login_cookie(handler)
        elif identity.login_id is not None:
            self.bind_xsrf(handler, identity.login_id)
        return identity

    def bind_xsrf(self, handler: web.RequestHandler, login_id: int) -> None:
        """Make the login's own token the one this request's XSRF check expects.

        tornado expects the token of the ``_xsrf`` cookie, which whoever can plant a cookie
        chooses; here the expectation comes from the login, and the cookie only carries the
        token to the page's script (``handler.xsrf_token`` sets it again when it differs).
        """
        token = login_xsrf_token(handler.settings["cookie_secret"], login_id)
        cookie = handler.get_cookie(handler.settings.get("xsrf_cookie_name", "_xsrf"))
        version, current, timestamp = (
            handler._decode_xsrf_token(cookie) if cookie else (None, None, None)
        )
        if current is None or timestamp is None or not hmac.compare_digest(current, token):
            version, timestamp = None, time.time()
        # tornado's check_xsrf_cookie and xsrf_token read the expected token from here.
        handler._raw_xsrf_token = (version, token, timestamp)

    async def request_has_credentials(self, request: httputil.HTTPServerRequest) -> bool:
        """Whether a request whose handler has not run yet carries a valid token or login
        cookie (for limits decided before its body is read); ``DatabaseUnavailable`` when
        that cannot be known."""
        token = request.query_arguments.get("token", [b""])[-1].decode(errors="replace")
        match = self.auth_header_pat.match(request.headers.get("Authorization", ""))
        if not token and match:
            token = match.group(2)
        if token and await self.accounts.identity_for_token(token) is not None:
            return True
        morsel = request.cookies.get(self.cookie_name)
        if morsel is None:
            return False
        secret = web.decode_signed_value(
            cast("PlatformApp", self.parent).cookie_secret,
            self.cookie_name,
            morsel.value,
            max_age_days=self.accounts.login_ttl / 86400 + 1,
            **self.get_secure_cookie_kwargs,
        )
        return secret is not None and (
            await self.accounts.identity_for_login(secret.decode()) is not None
        )

    def login_secret(self, handler: web.RequestHandler) -> str | None:
        """The login secret in the request's signed cookie, if any."""
        value = handler.get_secure_cookie(
            self.get_cookie_name(handler),
            max_age_days=self.accounts.login_ttl / 86400 + 1,
            **self.get_secure_cookie_kwargs,
        )
        return value.decode() if value else None

    def _cookie_options(self, handler: web.RequestHandler) -> dict[str, Any]:
        """Signed, HttpOnly, SameSite=Lax, Secure under HTTPS, for the platform's path."""
        options: dict[str, Any] = {"httponly": True, "samesite": "Lax"}
        options.update(self.cookie_options)
        secure = self.secure_cookie
        if secure is None:
            secure = handler.request.protocol == "https"
        if secure:
            options.setdefault("secure", True)
        options.setdefault("path", handler.base_url)  # type: ignore[attr-defined]
        return options

    def set_login_secret(self, handler: web.RequestHandler, secret: str) -> None:
        """Put a new login's secret in a signed, HttpOnly, SameSite=Lax cookie."""
        handler.set_secure_cookie(
            self.get_cookie_name(handler),
            secret,
            expires_days=self.accounts.login_ttl / 86400,
            **self._cookie_options(handler),
        )

    def known_browser(self, handler: web.RequestHandler) -> KnownBrowser | None:
        """The user this browser last logged in as, from its signed cookie, if still valid."""
        ttl = self.accounts.known_browser_ttl
        if ttl <= 0:
            return None
        value = handler.get_secure_cookie(
            KNOWN_BROWSER_COOKIE, max_age_days=ttl / 86400, **self.get_secure_cookie_kwargs
        )
        user_id, _, browser_id = (value or b"").decode(errors="replace").partition(":")
        if not user_id.isdigit() or not browser_id:
            return None
        return KnownBrowser(int(user_id), browser_id)

    def remember_browser(self, handler: web.RequestHandler, user_id: int) -> None:
        """After a successful login: this browser is known for ``Accounts.known_browser_ttl``."""
        ttl = self.accounts.known_browser_ttl
        if ttl <= 0:
            return
        handler.set_secure_cookie(
            KNOWN_BROWSER_COOKIE,
            f"{user_id}:{secrets.token_urlsafe(16)}",
            expires_days=ttl / 86400,
            **self._cookie_options(handler),
        )

    def identity_model(self, user: User) -> dict[str, Any]:
        """jupyter_server's identity model (``/api/me``), without platform internals."""
        return {
            "username": user.username,
            "name": user.name,
            "display_name": user.display_name,
            "initials": user.initials,
            "avatar_url": user.avatar_url,
            "color": user.color,
        }


class PlatformAuthorizer(Authorizer):
    """Authenticated users may use every service; the ``admin`` resource is for admins.

    Workspace ownership is not a permission here: another user's workspace does not exist for
    the caller (404), which the workspace handlers decide.
    """

    def is_authorized(
        self, handler: JupyterHandler, user: User, action: str, resource: str
    ) -> bool:
        """Whether ``user`` may perform ``action`` on ``resource``."""
        if resource == "admin":
            return isinstance(user, PlatformUser) and user.is_admin
        return isinstance(user, PlatformUser)
