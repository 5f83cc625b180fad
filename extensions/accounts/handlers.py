"""REST handlers of ``/api/accounts`` and ``/api/admin``."""

from __future__ import annotations

from typing import cast

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from tornado import web

from extensions.accounts.identity import PlatformIdentityProvider, PlatformUser
from extensions.accounts.manager import Accounts, Identity
from platform_server.handlers import PlatformAPIHandler


class AccountsHandler(PlatformAPIHandler):
    """Base of the account handlers: access to ``Accounts`` and the caller's identity."""

    @property
    def platform_identity(self) -> PlatformIdentityProvider:
        """The identity provider (it sets and reads the login cookie)."""
        return cast(PlatformIdentityProvider, self.identity_provider)

    @property
    def accounts(self) -> Accounts:
        """The accounts service."""
        return cast(Accounts, self.settings["accounts"])

    @property
    def identity(self) -> Identity:
        """Who made this (authenticated) request."""
        user = cast(PlatformUser, self.current_user)
        assert user.identity is not None  # noqa: S101  (web.authenticated ran first)
        return user.identity


class UnauthenticatedFormHandler(AccountsHandler):
    """Register and log in: no login yet, so no XSRF cookie to check.

    Cross-site forms still cannot post here: the body must be ``application/json``, which a
    browser only sends cross-origin after a CORS preflight that this server refuses, and
    jupyter_server's origin check applies.
    """

    def check_xsrf_cookie(self) -> None:
        """Skip XSRF: these requests carry no credentials to abuse."""


class RegisterHandler(UnauthenticatedFormHandler):
    """``POST /api/accounts/register`` ``{username, password, email?}``."""

    @allow_unauthenticated
    async def post(self) -> None:
        """Create an account."""
        body = self.read_json(frozenset({"username", "password", "email"}))
        user = await self.accounts.register(body)
        self.finish_json(self.accounts.user_model(user), status=201)


class LoginHandler(UnauthenticatedFormHandler):
    """``POST /api/accounts/login`` ``{username, password}``: sets the login cookie."""

    @allow_unauthenticated
    async def post(self) -> None:
        """Check the password and start a login."""
        body = self.read_json(frozenset({"username", "password"}))
        identity = self.platform_identity
        login = await self.accounts.login(
            body,
            self.request.remote_ip or "unknown",
            self.request.headers.get("User-Agent"),
            identity.known_browser(self),
        )
        identity.set_login_secret(self, login.secret)
        identity.remember_browser(self, login.user["id"])
        identity.bind_xsrf(self, login.login_id)
        self.xsrf_token  # noqa: B018  (sets the _xsrf cookie the next writes must echo)
        self.finish_json(self.accounts.user_model(login.user))


class LogoutHandler(AccountsHandler):
    """``POST /api/accounts/logout``: revokes this login server-side."""

    @web.authenticated
    async def post(self) -> None:
        """End the login this request came through."""
        await self.accounts.logout(self.identity)
        self.platform_identity.clear_login_cookie(self)
        self.set_status(204)
        self.finish()


class MeHandler(AccountsHandler):
    """``GET/PATCH /api/accounts/me``: the caller's account."""

    @web.authenticated
    async def get(self) -> None:
        """Return the caller's account."""
        self.finish_json(self.accounts.user_model(self.identity.user))

    @web.authenticated
    async def patch(self) -> None:
        """Update the caller's profile (``email``)."""
        body = self.read_json(frozenset({"email"}))
        user = await self.accounts.update_profile(self.identity.user, body)
        self.finish_json(self.accounts.user_model(user))


class PasswordHandler(AccountsHandler):
    """``POST /api/accounts/password`` ``{old_password, new_password, revoke_tokens?}``."""

    @web.authenticated
    async def post(self) -> None:
        """Change the password; every other login of the user is revoked, and every API token
        too (but the one making the request) unless ``revoke_tokens`` is false."""
        body = self.read_json(frozenset({"old_password", "new_password", "revoke_tokens"}))
        self.finish_json(await self.accounts.change_password(self.identity, body))


class TokensHandler(AccountsHandler):
    """``GET/POST /api/accounts/tokens``."""

    @web.authenticated
    async def get(self) -> None:
        """List the caller's tokens (never their secrets)."""
        self.finish_json(await self.accounts.list_tokens(self.identity.user))

    @web.authenticated
    async def post(self) -> None:
        """Create a token ``{name, expires_in_days?}``; the secret is shown only here."""
        body = self.read_json(frozenset({"name", "expires_in_days"}))
        token = await self.accounts.create_token(self.identity.user, body)
        self.finish_json(token, status=201)


class TokenHandler(AccountsHandler):
    """``DELETE /api/accounts/tokens/<id>``."""

    @web.authenticated
    async def delete(self, token_id: str) -> None:
        """Revoke one of the caller's tokens."""
        await self.accounts.revoke_token(self.identity.user, int(token_id))
        self.set_status(204)
        self.finish()


class AdminUsersHandler(AccountsHandler):
    """``GET /api/admin/users``."""

    auth_resource = "admin"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """List every user."""
        users = await self.accounts.list_users()
        self.finish_json([self.accounts.admin_user_model(u) for u in users])


class AdminUserHandler(AccountsHandler):
    """``PATCH /api/admin/users/<name>`` ``{disabled?, is_admin?}``."""

    auth_resource = "admin"

    @web.authenticated
    @authorized
    async def patch(self, username: str) -> None:
        """Disable, enable, promote or demote a user."""
        body = self.read_json(frozenset({"disabled", "is_admin"}))
        user = await self.accounts.administer(self.identity, username, body)
        self.finish_json(self.accounts.admin_user_model(user))


default_handlers = [
    (r"/api/accounts/register", RegisterHandler),
    (r"/api/accounts/login", LoginHandler),
    (r"/api/accounts/logout", LogoutHandler),
    (r"/api/accounts/me", MeHandler),
    (r"/api/accounts/password", PasswordHandler),
    (r"/api/accounts/tokens", TokensHandler),
    (r"/api/accounts/tokens/(\d{1,18})", TokenHandler),
    (r"/api/admin/users", AdminUsersHandler),
    (r"/api/admin/users/([^/]+)", AdminUserHandler),
]
