"""Who is making a request: jupyter_server's IdentityProvider and Authorizer for the platform."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import Instance, default

from extensions.accounts.manager import Accounts, Identity
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
        return identity

    def login_secret(self, handler: web.RequestHandler) -> str | None:
        """The login secret in the request's signed cookie, if any."""
        value = handler.get_secure_cookie(
            self.get_cookie_name(handler),
            max_age_days=self.accounts.login_ttl / 86400 + 1,
            **self.get_secure_cookie_kwargs,
        )
        return value.decode() if value else None

    def set_login_secret(self, handler: web.RequestHandler, secret: str) -> None:
        """Put a new login's secret in a signed, HttpOnly, SameSite=Lax cookie."""
        options: dict[str, Any] = {"httponly": True, "samesite": "Lax"}
        options.update(self.cookie_options)
        secure = self.secure_cookie
        if secure is None:
            secure = handler.request.protocol == "https"
        if secure:
            options.setdefault("secure", True)
        options.setdefault("path", handler.base_url)  # type: ignore[attr-defined]
        handler.set_secure_cookie(
            self.get_cookie_name(handler),
            secret,
            expires_days=self.accounts.login_ttl / 86400,
            **options,
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
