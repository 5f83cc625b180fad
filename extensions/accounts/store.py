"""SQL of accounts: users, logins, API tokens and login failures. No transactions of its own."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

import psycopg
from psycopg import sql

from platform_server.db import Connection
from platform_server.errors import Conflict, NotFound

# Touch last_seen/last_used at most this often (seconds), not on every request.
TOUCH_INTERVAL = 60


class UserRow(TypedDict):
    """One row of ``users``."""

    id: int
    username: str
    email: str | None
    password_hash: str
    is_admin: bool
    disabled: bool
    created_at: datetime


class TokenRow(TypedDict):
    """One row of ``api_tokens`` (its hash left out)."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class FailureRow(TypedDict):
    """Failed logins counted for one key in the current window."""

    key: str
    failures: int
    retry_after: float | None


_USER_FIELDS = ("id", "username", "email", "password_hash", "is_admin", "disabled", "created_at")
USER_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, _USER_FIELDS))
# The same columns of users aliased as "u", for joins.
U_COLUMNS = sql.SQL(", ").join(sql.Identifier("u", f) for f in _USER_FIELDS)


async def create_user(
    conn: Connection, username: str, email: str | None, password_hash: str, *, is_admin: bool
) -> UserRow:
    """Insert a user; ``Conflict`` when the name is taken."""
    try:
        cur = await conn.execute(
            sql.SQL(
                """INSERT INTO users (username, email, password_hash, is_admin)
                VALUES (%s, %s, %s, %s) RETURNING {cols}"""
            ).format(cols=USER_COLUMNS),
            [username, email, password_hash, is_admin],
        )
    except psycopg.errors.UniqueViolation as e:
        msg = f"The username '{username}' is taken."
        raise Conflict(msg) from e
    return cast(UserRow, await cur.fetchone())


def lock_service_user(conn: psycopg.Connection[Any], username: str) -> int:
    """The id of the user ``username``, made if missing, its row locked until the transaction
    ends (so that processes starting at once serialise on it).

    A user made here has the password hash '!', which matches no password: it can never log
    in. Synchronous, for start-up code on a plain ``psycopg.Connection``.
    """
    conn.execute(
        "INSERT INTO users (username, password_hash) VALUES (%s, '!') ON CONFLICT DO NOTHING",
        [username],
    )
    row = conn.execute(
        "SELECT id FROM users WHERE lower(username) = lower(%s) FOR UPDATE", [username]
    ).fetchone()
    assert row is not None  # noqa: S101 (inserted above)
    return int(row[0])


async def get_user_by_name(conn: Connection, username: str) -> UserRow | None:
    """The user called ``username`` (case-insensitive), or None."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM users WHERE lower(username) = lower(%s)").format(
            cols=USER_COLUMNS
        ),
        [username],
    )
    return cast(UserRow | None, await cur.fetchone())


async def get_user(conn: Connection, user_id: int) -> UserRow:
    """The user with this id; ``NotFound`` if it was deleted."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM users WHERE id = %s").format(cols=USER_COLUMNS), [user_id]
    )
    row = await cur.fetchone()
    if row is None:
        msg = "No such user."
        raise NotFound(msg)
    return cast(UserRow, row)


async def list_users(conn: Connection) -> list[UserRow]:
    """Every user, oldest first."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM users ORDER BY id").format(cols=USER_COLUMNS)
    )
    return cast(list[UserRow], await cur.fetchall())


async def update_user(
    conn: Connection,
    user_id: int,
    *,
    email: str | None = None,
    clear_email: bool = False,
    password_hash: str | None = None,
    disabled: bool | None = None,
    is_admin: bool | None = None,
) -> UserRow:
    """Change the given fields of one user and return the new row."""
    cur = await conn.execute(
        sql.SQL(
            """UPDATE users SET
                email = CASE WHEN %(clear_email)s THEN NULL ELSE coalesce(%(email)s, email) END,
                password_hash = coalesce(%(password_hash)s, password_hash),
                disabled = coalesce(%(disabled)s, disabled),
                is_admin = coalesce(%(is_admin)s, is_admin),
                updated_at = now()
            WHERE id = %(id)s RETURNING {cols}"""
        ).format(cols=USER_COLUMNS),
        {
            "id": user_id,
            "email": email,
            "clear_email": clear_email,
            "password_hash": password_hash,
            "disabled": disabled,
            "is_admin": is_admin,
        },
    )
    row = await cur.fetchone()
    if row is None:
        msg = "No such user."
        raise NotFound(msg)
    return cast(UserRow, row)


async def create_login(
    conn: Connection,
    user_id: int,
    secret_hash: bytes,
    ttl_seconds: int,
    remote_ip: str | None,
    user_agent: str | None,
) -> int:
    """Record a browser login; return its id."""
    cur = await conn.execute(
        """INSERT INTO logins (user_id, secret_hash, expires_at, remote_ip, user_agent)
           VALUES (%s, %s, now() + make_interval(secs => %s), %s, %s) RETURNING id""",
        [user_id, secret_hash, ttl_seconds, remote_ip, (user_agent or "")[:500]],
    )
    row = await cur.fetchone()
    assert row is not None  # noqa: S101
    return int(row["id"])


async def user_for_login(conn: Connection, secret_hash: bytes) -> tuple[UserRow, int] | None:
    """The enabled user of an unexpired login, with the login's id; None otherwise.

    One statement (it runs on every request): it also dates the login's use, at most once
    every ``TOUCH_INTERVAL`` seconds.
    """
    cur = await conn.execute(
        sql.SQL(
            """WITH found AS (
                   SELECT l.id AS login_id, l.last_seen_at, {cols}
                   FROM logins l JOIN users u ON u.id = l.user_id
                   WHERE l.secret_hash = %(hash)s AND l.expires_at > now() AND NOT u.disabled),
               seen AS (
                   UPDATE logins SET last_seen_at = now()
                   WHERE id = (SELECT login_id FROM found
                               WHERE last_seen_at < now() - make_interval(secs => %(every)s)))
               SELECT * FROM found"""
        ).format(cols=U_COLUMNS),
        {"hash": secret_hash, "every": TOUCH_INTERVAL},
    )
    row = await cur.fetchone()
    if row is None:
        return None
    login_id = int(row.pop("login_id"))
    del row["last_seen_at"]
    return cast(UserRow, row), login_id


async def delete_login(conn: Connection, login_id: int) -> None:
    """Revoke one login."""
    await conn.execute("DELETE FROM logins WHERE id = %s", [login_id])


async def delete_logins(conn: Connection, user_id: int, *, keep: int | None = None) -> int:
    """Revoke every login of a user except ``keep``; return how many were revoked."""
    cur = await conn.execute(
        "DELETE FROM logins WHERE user_id = %s AND id IS DISTINCT FROM %s", [user_id, keep]
    )
    return cur.rowcount


async def create_token(
    conn: Connection, user_id: int, name: str, token_hash: bytes, expires_in_days: int | None
) -> TokenRow:
    """Record an API token (only its hash)."""
    cur = await conn.execute(
        """INSERT INTO api_tokens (user_id, name, token_hash, expires_at)
           VALUES (%s, %s, %s, now() + make_interval(days => %s))
           RETURNING id, name, created_at, last_used_at, expires_at""",
        [user_id, name, token_hash, expires_in_days],
    )
    return cast(TokenRow, await cur.fetchone())


async def count_tokens(conn: Connection, user_id: int) -> int:
    """How many tokens a user has, expired ones included."""
    cur = await conn.execute("SELECT count(*) AS n FROM api_tokens WHERE user_id = %s", [user_id])
    row = await cur.fetchone()
    assert row is not None  # noqa: S101
    return int(row["n"])


async def list_tokens(conn: Connection, user_id: int) -> list[TokenRow]:
    """A user's tokens, newest first."""
    cur = await conn.execute(
        """SELECT id, name, created_at, last_used_at, expires_at FROM api_tokens
           WHERE user_id = %s ORDER BY id DESC""",
        [user_id],
    )
    return cast(list[TokenRow], await cur.fetchall())


async def delete_token(conn: Connection, user_id: int, token_id: int) -> None:
    """Revoke one of a user's tokens; ``NotFound`` if the user has no such token."""
    cur = await conn.execute(
        "DELETE FROM api_tokens WHERE id = %s AND user_id = %s", [token_id, user_id]
    )
    if cur.rowcount == 0:
        msg = f"No token with id {token_id}."
        raise NotFound(msg)


async def delete_tokens(conn: Connection, user_id: int, *, keep: int | None = None) -> int:
    """Revoke every API token of a user except ``keep``; return how many were revoked."""
    cur = await conn.execute(
        "DELETE FROM api_tokens WHERE user_id = %s AND id IS DISTINCT FROM %s", [user_id, keep]
    )
    return cur.rowcount


async def user_for_token(conn: Connection, token_hash: bytes) -> tuple[UserRow, int] | None:
    """The enabled user of an unexpired token, with the token's id; None otherwise.

    One statement (it runs on every request): it also dates the token's use, at most once
    every ``TOUCH_INTERVAL`` seconds.
    """
    cur = await conn.execute(
        sql.SQL(
            """WITH found AS (
                   SELECT t.id AS token_id, t.last_used_at, {cols}
                   FROM api_tokens t JOIN users u ON u.id = t.user_id
                   WHERE t.token_hash = %(hash)s
                     AND (t.expires_at IS NULL OR t.expires_at > now()) AND NOT u.disabled),
               used AS (
                   UPDATE api_tokens SET last_used_at = now()
                   WHERE id = (SELECT token_id FROM found
                               WHERE last_used_at IS NULL
                                  OR last_used_at < now() - make_interval(secs => %(every)s)))
               SELECT * FROM found"""
        ).format(cols=U_COLUMNS),
        {"hash": token_hash, "every": TOUCH_INTERVAL},
    )
    row = await cur.fetchone()
    if row is None:
        return None
    token_id = int(row.pop("token_id"))
    del row["last_used_at"]
    return cast(UserRow, row), token_id


async def get_failures(conn: Connection, keys: list[str], window_seconds: int) -> list[FailureRow]:
    """Failure counts in the current window, and seconds until a block ends (None: no block)."""
    cur = await conn.execute(
        """SELECT key,
                  CASE WHEN window_started_at > now() - make_interval(secs => %s)
                       THEN failures ELSE 0 END AS failures,
                  CASE WHEN blocked_until > now()
                       THEN extract(epoch FROM blocked_until - now())::float END AS retry_after
           FROM login_failures WHERE key = ANY(%s)""",
        [window_seconds, keys],
    )
    return cast(list[FailureRow], await cur.fetchall())


async def record_failure(
    conn: Connection, key: str, *, window_seconds: int, block_after: int, block_seconds: int
) -> int:
    """Count one failed login for ``key``; block it once it reaches ``block_after``."""
    cur = await conn.execute(
        """INSERT INTO login_failures AS f (key, failures, window_started_at)
           VALUES (%(key)s, 1, now())
           ON CONFLICT (key) DO UPDATE SET
               failures = CASE WHEN f.window_started_at > now() - make_interval(secs => %(window)s)
                               THEN f.failures + 1 ELSE 1 END,
               window_started_at = CASE
                   WHEN f.window_started_at > now() - make_interval(secs => %(window)s)
                   THEN f.window_started_at ELSE now() END
           RETURNING failures""",
        {"key": key, "window": window_seconds},
    )
    row = await cur.fetchone()
    assert row is not None  # noqa: S101
    failures = int(row["failures"])
    if failures >= block_after:
        await conn.execute(
            """UPDATE login_failures
               SET blocked_until = now() + make_interval(secs => %s), failures = 0,
                   window_started_at = now()
               WHERE key = %s""",
            [block_seconds, key],
        )
    return failures


async def clear_failures(conn: Connection, key: str) -> None:
    """Forget the failed logins of ``key`` (after a successful login)."""
    await conn.execute("DELETE FROM login_failures WHERE key = %s", [key])
