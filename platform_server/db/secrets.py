"""Secrets that every replica must share (the cookie-signing key), kept in PostgreSQL."""

from __future__ import annotations

import secrets

import psycopg


def load_or_create_secret(conninfo: str, name: str, nbytes: int = 32) -> bytes:
    """The secret called ``name``; the first replica to ask creates it."""
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO platform_secrets (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [name, secrets.token_bytes(nbytes)],
        )
        row = conn.execute("SELECT value FROM platform_secrets WHERE name = %s", [name]).fetchone()
    assert row is not None  # noqa: S101  (inserted just above in the same transaction)
    value: bytes = row[0]
    return value
