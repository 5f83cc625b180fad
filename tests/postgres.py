"""A real PostgreSQL for tests: $TEST_DATABASE_URL, or one embedded server per test run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

TEMPLATE = "platform_test_template"


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` pointed at another database of the same server."""
    params = conninfo_to_dict(admin_url)
    params["dbname"] = name
    return make_conninfo(**params)


@contextmanager
def postgres_server(tmp_dir: Path) -> Iterator[str]:
    """Yield an admin conninfo of a PostgreSQL server that lives as long as the block."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    import pgserver

    server = pgserver.get_server(tmp_dir / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()


def create_database(admin_url: str, *, template: str | None = None) -> str:
    """Create a uniquely named database; return its conninfo."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(query)
    return database_url(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    """Drop a database made by ``create_database``, closing its connections."""
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )
