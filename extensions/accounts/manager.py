"""``Accounts``: registration, password logins with throttling, API tokens, administration."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, TypedDict

from traitlets import Bool, Float, Instance, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from extensions.accounts import store, validation
from extensions.accounts.passwords import check_password, hash_password
from extensions.accounts.store import TokenRow, UserRow
from platform_server import metrics
from platform_server.db import Database
from platform_server.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from platform_server.timefmt import isoformat

TOKEN_PREFIX = "cep_"  # noqa: S105  (a marker that makes leaked tokens greppable)
BAD_CREDENTIALS = "Invalid username or password."


class TooManyAttempts(DomainError):
    """Too many failed logins for this username or address; ``retry_after`` in seconds."""

    status_code = 429
    reason = "too_many_attempts"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(
            f"Too many failed logins. Try again in {self.retry_after} s.",
        )

    def headers(self) -> dict[str, str]:
        """When to try again."""
        return {"Retry-After": str(self.retry_after)}


class BadCredentials(DomainError):
    """Wrong username or password (which one is never said)."""

    status_code = 401
    reason = "bad_credentials"


class UserModel(TypedDict):
    """A user as the API shows it."""

    id: int
    username: str
    email: str | None
    created_at: str
    is_admin: bool


class AdminUserModel(UserModel):
    """A user as administrators see it."""

    disabled: bool


class TokenModel(TypedDict):
    """An API token as the API lists it (never the secret)."""

    id: int
    name: str
    created_at: str
    last_used_at: str | None
    expires_at: str | None


class NewTokenModel(TokenModel):
    """A token just created: the only time its secret is shown."""

    token: str


class PasswordChangeModel(TypedDict):
    """What a password change revoked."""

    revoked_logins: int
    revoked_tokens: int


@dataclass(frozen=True)
class Identity:
    """Who made a request, and through which login or API token (the other one is None)."""

    user: UserRow
    is_admin: bool
    login_id: int | None
    token_id: int | None = None


@dataclass(frozen=True)
class KnownBrowser:
    """A browser that logged in successfully as ``user_id`` before (its signed cookie)."""

    user_id: int
    browser_id: str


@dataclass(frozen=True)
class NewLogin:
    """A successful password login: the user, and the login's id and cookie secret."""

    user: UserRow
    login_id: int
    secret: str


def secret_hash(secret: str) -> bytes:
    """What the database stores of a cookie secret or token: its SHA-256."""
    return hashlib.sha256(secret.encode()).digest()


class Accounts(LoggingConfigurable):
    """Every account operation; handlers and the identity provider call into this."""

    allow_registration = Bool(
        True, help="Whether anyone may register an account; False leaves it to admins."
    ).tag(config=True)

    admin_users = List(
        Unicode(), help="Usernames that are administrators, besides users created with --admin."
    ).tag(config=True)

    bcrypt_cost = Integer(
        12, help="bcrypt cost factor (log2 of rounds) of new password hashes; 4 to 31."
    ).tag(config=True)

    login_ttl = Integer(
        14 * 24 * 3600, help="Seconds a browser login lasts before the user must log in again."
    ).tag(config=True)

    max_tokens_per_user = Integer(100, help="Most API tokens one user may hold.").tag(config=True)

    failure_window = Integer(
        900, help="Seconds over which failed logins are counted for throttling."
    ).tag(config=True)

    slow_down_after = Integer(
        3, help="Failed logins (per username or address) after which each attempt is delayed."
    ).tag(config=True)

    failure_delay = Float(
        0.5,
        help="Seconds of delay for the first throttled attempt; doubles per failure, "
        "at most 8 s. 0 disables the delay.",
    ).tag(config=True)

    block_after_user = Integer(
        10, help="Failed logins for one username after which it is refused with 429."
    ).tag(config=True)

    block_after_address = Integer(
        50, help="Failed logins from one client address after which it is refused with 429."
    ).tag(config=True)

    block_seconds = Integer(
        900, help="Seconds a username or address stays refused once blocked."
    ).tag(config=True)

    known_browser_ttl = Integer(
        365 * 24 * 3600,
        help="Seconds a browser stays known after a successful login (a signed cookie). A "
        "known browser's logins are throttled by its own failures only, so failures for the "
        "username or from its address (someone guessing) do not lock its user out. "
        "0 disables: every login is throttled by username and address.",
    ).tag(config=True)

    db = Instance(Database)

    _dummy_hash: str | None = None

    # --- users -----------------------------------------------------------------------------

    def is_admin(self, user: UserRow) -> bool:
        """Whether a user is an administrator, by flag or by configuration."""
        return user["is_admin"] or user["username"] in {u.lower() for u in self.admin_users}

    def user_model(self, user: UserRow) -> UserModel:
        """The public JSON model of a user."""
        return {
            "id": user["id"],
            "username": user["username"],
            "email": user["email"],
            "created_at": isoformat(user["created_at"]) or "",
            "is_admin": self.is_admin(user),
        }

    def admin_user_model(self, user: UserRow) -> AdminUserModel:
        """A user as administrators see it."""
        return {**self.user_model(user), "disabled": user["disabled"]}

    async def create_user(
        self, username: Any, password: Any, email: Any = None, *, is_admin: bool = False
    ) -> UserRow:
        """Validate and create an account."""
        name = validation.username(username)
        secret = validation.password(password)
        address = validation.email(email)
        password_hash = await hash_password(secret, self.bcrypt_cost)
        async with self.db.transaction() as conn:
            user = await store.create_user(conn, name, address, password_hash, is_admin=is_admin)
        self.log.info("accounts | user %s created (admin=%s)", name, is_admin)
        return user

    async def register(self, body: dict[str, Any]) -> UserRow:
        """Self-service registration, when allowed."""
        if not self.allow_registration:
            msg = "Registration is closed. Ask an administrator for an account."
            raise Forbidden(msg)
        user = await self.create_user(body.get("username"), body.get("password"), body.get("email"))
        metrics.REGISTRATIONS.inc()
        return user

    async def update_profile(self, user: UserRow, body: dict[str, Any]) -> UserRow:
        """Change a user's own profile (the email address)."""
        if "email" not in body:
            msg = "Nothing to change: send {'email': ...}."
            raise InvalidInput(msg)
        address = validation.email(body["email"])
        async with self.db.transaction() as conn:
            return await store.update_user(
                conn, user["id"], email=address, clear_email=address is None
            )

    async def change_password(
        self, identity: Identity, body: dict[str, Any]
    ) -> PasswordChangeModel:
        """Change the password; revoke every other login and, unless ``revoke_tokens`` is
        false, every API token but the one making the request. Say how many were revoked."""
        old = validation.login_password(body.get("old_password"), "old_password")
        new = validation.password(body.get("new_password"), "new_password")
        revoke_tokens = validation.boolean(body.get("revoke_tokens", True), "revoke_tokens")
        if not await check_password(old, identity.user["password_hash"]):
            msg = "old_password is wrong."
            raise InvalidInput(msg)
        password_hash = await hash_password(new, self.bcrypt_cost)
        user_id = identity.user["id"]
        async with self.db.transaction() as conn:
            await store.update_user(conn, user_id, password_hash=password_hash)
            logins = await store.delete_logins(conn, user_id, keep=identity.login_id)
            tokens = (
                await store.delete_tokens(conn, user_id, keep=identity.token_id)
                if revoke_tokens
                else 0
            )
        self.log.info(
            "accounts | user %s changed password, %d other logins and %d tokens revoked",
            identity.user["username"],
            logins,
            tokens,
        )
        return {"revoked_logins": logins, "revoked_tokens": tokens}

    async def list_users(self) -> list[UserRow]:
        """Every user (for administrators)."""
        async with self.db.transaction() as conn:
            return await store.list_users(conn)

    async def administer(self, admin: Identity, username: str, body: dict[str, Any]) -> UserRow:
        """Disable, enable, promote or demote a user; disabling revokes their logins."""
        disabled = validation.boolean(body["disabled"], "disabled") if "disabled" in body else None
        is_admin = validation.boolean(body["is_admin"], "is_admin") if "is_admin" in body else None
        if disabled is None and is_admin is None:
            msg = "Nothing to change: send {'disabled': ...} or {'is_admin': ...}."
            raise InvalidInput(msg)
        async with self.db.transaction() as conn:
            target = await store.get_user_by_name(conn, username)
            if target is None:
                msg = f"No user named '{username}'."
                raise NotFound(msg)
            if target["id"] == admin.user["id"] and (disabled or is_admin is False):
                msg = "Administrators cannot disable or demote themselves."
                raise Conflict(msg)
            user = await store.update_user(conn, target["id"], disabled=disabled, is_admin=is_admin)
            if disabled:
                await store.delete_logins(conn, target["id"])
        self.log.info(
            "accounts | admin %s set %s disabled=%s is_admin=%s",
            admin.user["username"],
            username,
            disabled,
            is_admin,
        )
        return user

    # --- logins ----------------------------------------------------------------------------

    async def _dummy_password_hash(self) -> str:
        # Checked against when the user does not exist, so both cases cost one bcrypt check.
        if self._dummy_hash is None:
            self._dummy_hash = await hash_password(secrets.token_urlsafe(16), self.bcrypt_cost)
        return self._dummy_hash

    async def _throttle(self, keys: list[str]) -> None:
        """Refuse blocked keys with 429, and delay attempts past ``slow_down_after``."""
        async with self.db.transaction() as conn:
            rows = await store.get_failures(conn, keys, self.failure_window)
        blocked = [row["retry_after"] for row in rows if row["retry_after"] is not None]
        if blocked:
            metrics.LOGIN_FAILURES.labels("blocked").inc()
            raise TooManyAttempts(max(blocked))
        excess = max((row["failures"] for row in rows), default=0) - self.slow_down_after
        if excess >= 0 and self.failure_delay > 0:
            await asyncio.sleep(min(8.0, self.failure_delay * 2**excess))

    async def login(
        self,
        body: dict[str, Any],
        remote_ip: str,
        user_agent: str | None,
        browser: KnownBrowser | None = None,
    ) -> NewLogin:
        """Check a password login; return the user and a new login (its secret for the cookie).

        Attempts are counted, delayed and blocked per username and per client address; from a
        browser that logged in as this user before (``browser``), only per browser, so that
        someone guessing the password cannot lock the user out of their own browser.
        """
        name = validation.required_string(body, "username").lower()
        password = validation.login_password(body.get("password"))
        async with self.db.transaction() as conn:
            user = await store.get_user_by_name(conn, name)
        known = user is not None and browser is not None and browser.user_id == user["id"]
        if known and browser is not None:
            keys = {f"browser:{browser.browser_id}": self.block_after_user}
        else:
            keys = {
                f"user:{name[:64]}": self.block_after_user,
                f"addr:{remote_ip}": self.block_after_address,
            }
        await self._throttle(list(keys))
        password_hash = user["password_hash"] if user else await self._dummy_password_hash()
        valid = await check_password(password, password_hash)
        if user is None or not valid or user["disabled"]:
            await self._record_failure(keys, name, remote_ip)
            raise BadCredentials(BAD_CREDENTIALS)
        secret = secrets.token_urlsafe(32)
        async with self.db.transaction() as conn:
            # The address's count stays: it also counts guesses at other usernames.
            await store.clear_failures(conn, next(iter(keys)))
            login_id = await store.create_login(
                conn, user["id"], secret_hash(secret), self.login_ttl, remote_ip, user_agent
            )
        metrics.LOGINS.inc()
        self.log.info(
            "accounts | user %s logged in from %s%s",
            name,
            remote_ip,
            " (known browser)" if known else "",
        )
        return NewLogin(user, login_id, secret)

    async def _record_failure(self, keys: dict[str, int], name: str, remote_ip: str) -> None:
        metrics.LOGIN_FAILURES.labels("bad_credentials").inc()
        async with self.db.transaction() as conn:
            for key, block_after in keys.items():
                await store.record_failure(
                    conn,
                    key,
                    window_seconds=self.failure_window,
                    block_after=block_after,
                    block_seconds=self.block_seconds,
                )
        self.log.warning("accounts | failed login for %r from %s", name[:64], remote_ip)

    async def identity_for_login(self, secret: str) -> Identity | None:
        """Who holds this login cookie secret, if the login is still valid."""
        async with self.db.connection() as conn:
            found = await store.user_for_login(conn, secret_hash(secret))
        if found is None:
            return None
        user, login_id = found
        return Identity(user, self.is_admin(user), login_id)

    async def logout(self, identity: Identity) -> None:
        """Revoke the login a request came through."""
        if identity.login_id is not None:
            async with self.db.transaction() as conn:
                await store.delete_login(conn, identity.login_id)

    # --- API tokens ------------------------------------------------------------------------

    def token_model(self, token: TokenRow) -> TokenModel:
        """The JSON model of a token, without its secret."""
        return {
            "id": token["id"],
            "name": token["name"],
            "created_at": isoformat(token["created_at"]) or "",
            "last_used_at": isoformat(token["last_used_at"]),
            "expires_at": isoformat(token["expires_at"]),
        }

    async def create_token(self, user: UserRow, body: dict[str, Any]) -> NewTokenModel:
        """Make an API token; its secret is in the answer and nowhere else."""
        name = validation.token_name(body.get("name"))
        days = validation.expires_in_days(body.get("expires_in_days"))
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.db.transaction() as conn:
            if await store.count_tokens(conn, user["id"]) >= self.max_tokens_per_user:
                msg = f"You have {self.max_tokens_per_user} tokens already; revoke one first."
                raise Conflict(msg)
            row = await store.create_token(conn, user["id"], name, secret_hash(token), days)
        self.log.info("accounts | user %s created token %d", user["username"], row["id"])
        return {**self.token_model(row), "token": token}

    async def list_tokens(self, user: UserRow) -> list[TokenModel]:
        """A user's tokens, newest first."""
        async with self.db.transaction() as conn:
            rows = await store.list_tokens(conn, user["id"])
        return [self.token_model(row) for row in rows]

    async def revoke_token(self, user: UserRow, token_id: int) -> None:
        """Delete one of the user's tokens."""
        async with self.db.transaction() as conn:
            await store.delete_token(conn, user["id"], token_id)
        self.log.info("accounts | user %s revoked token %d", user["username"], token_id)

    async def identity_for_token(self, token: str) -> Identity | None:
        """Who holds this API token, if it is valid."""
        async with self.db.connection() as conn:
            found = await store.user_for_token(conn, secret_hash(token))
        if found is None:
            return None
        user, token_id = found
        return Identity(user, self.is_admin(user), None, token_id)
