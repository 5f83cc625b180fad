"""bcrypt hashing, always in a worker thread: a hash takes ~0.25 s at cost 12."""

from __future__ import annotations

import asyncio

import bcrypt

# bcrypt only reads the first 72 bytes; longer passwords are refused rather than truncated.
MAX_PASSWORD_BYTES = 72
# A password given to be checked (login, password change) is refused past this many bytes
# before anything else happens to it; up to it, only its first 72 bytes are compared.
MAX_LOGIN_PASSWORD_BYTES = 1024


async def hash_password(password: str, cost: int) -> str:
    """The bcrypt hash of ``password``."""
    hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt(cost))
    return hashed.decode()


async def check_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches ``password_hash``."""
    encoded = password.encode()[:MAX_PASSWORD_BYTES]
    return await asyncio.to_thread(bcrypt.checkpw, encoded, password_hash.encode())
