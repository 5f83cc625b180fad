"""Versioned SQL migrations, applied at start-up under an advisory lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

# Any constant shared by every replica; it names the lock, it is not a secret.
MIGRATION_LOCK_ID = 7_081_542_016
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One SQL file of ``platform_server/db/migrations``."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("platform_server.db").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        msg = f"Two migrations share a version number: {versions}"
        raise RuntimeError(msg)
    return found


def apply_migrations(conninfo: str, log: logging.Logger) -> list[int]:
    """Apply the migrations this database lacks, all in one transaction; return their versions.

    The transaction holds an advisory lock, so replicas starting at once apply each migration
    exactly once: the others wait, then find nothing left to do.
    """
    migrations = load_migrations()
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_ID])
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            log.info("database | applying migration %04d_%s", migration.version, migration.name)
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                [migration.version, migration.name],
            )
            done.append(migration.version)
    return done
