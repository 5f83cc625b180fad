"""Validation of account input; each failure names the field it is about."""

from __future__ import annotations

import re
from typing import Any

from extensions.accounts.passwords import MAX_LOGIN_PASSWORD_BYTES, MAX_PASSWORD_BYTES
from platform_server.errors import InvalidInput

USERNAME = re.compile(r"[a-z0-9_.-]{3,32}")
# Deliberately loose: one @, a dot in the domain, no spaces. Delivery is the real test.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MIN_PASSWORD_LENGTH = 8
MAX_TOKEN_DAYS = 3650


def _fail(message: str) -> InvalidInput:
    return InvalidInput(message)


def username(value: Any) -> str:
    """A username, lower-cased: 3-32 characters of a-z, 0-9, '_', '.', '-'."""
    if not isinstance(value, str) or not USERNAME.fullmatch(value.lower()):
        msg = "username must be 3-32 characters of a-z, 0-9, '_', '.' and '-'."
        raise _fail(msg)
    return value.lower()


def password(value: Any, field: str = "password") -> str:
    """A new password: at least 8 characters, at most 72 bytes."""
    if not isinstance(value, str) or len(value) < MIN_PASSWORD_LENGTH:
        msg = f"{field} must be at least {MIN_PASSWORD_LENGTH} characters."
        raise _fail(msg)
    if _utf8_size(value, field) > MAX_PASSWORD_BYTES or "\x00" in value:
        msg = f"{field} must be at most {MAX_PASSWORD_BYTES} bytes and contain no NUL character."
        raise _fail(msg)
    return value


def _utf8_size(value: str, field: str) -> int:
    try:
        return len(value.encode())
    except UnicodeEncodeError as e:  # a lone surrogate, which JSON's \u escapes allow
        msg = f"{field} must be valid Unicode text."
        raise _fail(msg) from e


def login_password(value: Any, field: str = "password") -> str:
    """A password given to be checked: non-empty, at most 1024 bytes."""
    if not isinstance(value, str) or not value:
        msg = f"{field} is required."
        raise _fail(msg)
    if len(value) > MAX_LOGIN_PASSWORD_BYTES or _utf8_size(value, field) > MAX_LOGIN_PASSWORD_BYTES:
        msg = f"{field} must be at most {MAX_LOGIN_PASSWORD_BYTES} bytes."
        raise _fail(msg)
    return value


def email(value: Any) -> str | None:
    """An email address, or None when not given."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 254 or not EMAIL.fullmatch(value):
        msg = "email is not a valid email address."
        raise _fail(msg)
    return value


def required_string(body: dict[str, Any], field: str) -> str:
    """A non-empty string field of a request body."""
    value = body.get(field)
    if not isinstance(value, str) or not value:
        msg = f"{field} is required."
        raise _fail(msg)
    return value


def token_name(value: Any) -> str:
    """A token's name: 1-100 characters, no control characters."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value.strip()) <= 100
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        msg = "name must be 1-100 characters without control characters."
        raise _fail(msg)
    return value.strip()


def expires_in_days(value: Any) -> int | None:
    """Days until a token expires (1-3650), or None for a token that never expires."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKEN_DAYS:
        msg = f"expires_in_days must be a whole number from 1 to {MAX_TOKEN_DAYS}, or null."
        raise _fail(msg)
    return value


def boolean(value: Any, field: str) -> bool:
    """A JSON boolean."""
    if not isinstance(value, bool):
        msg = f"{field} must be true or false."
        raise _fail(msg)
    return value
