"""An embedded PostgreSQL server (``pgserver``) in the platform's data folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

DATABASE_NAME = "platform"


class EmbeddedPostgres:
    """Runs PostgreSQL from the ``pgserver`` wheel; no system package is needed.

    The server listens only on a Unix socket inside its data folder. When this process runs as
    root, pgserver runs PostgreSQL as its own unprivileged system user.
    """

    def __init__(self, data_dir: Path, log: logging.Logger) -> None:
        self.pgdata = data_dir / "pgdata"
        self.log = log
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return the conninfo of the platform's database."""
        # Slow to import, and only needed without DATABASE_URL.
        from pgserver.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.log.info("database | starting embedded PostgreSQL in %s", self.pgdata)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        admin_uri: str = self._server.get_uri("postgres")
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
        uri: str = self._server.get_uri(DATABASE_NAME)
        return uri

    def stop(self) -> None:
        """Stop the server unless another process of this data folder still uses it."""
        if self._server is not None:
            self.log.info("database | stopping embedded PostgreSQL")
            self._server.cleanup()
            self._server = None
