"""Fixtures of PostgresContentsManager tests: a workspace made with plain SQL, a pool, and
managers bound to the workspace (made available to every test module by conftest.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from traitlets.config import Config

from extensions.workspaces.contents import PostgresContentsManager
from platform_server.db import Database


def manager_config() -> Config:
    """Notebook signatures in memory: no SQLite file per test."""
    return Config({"NotebookNotary": {"db_file": ":memory:"}})


def create_workspace(database_url: str, name: str = "contract") -> uuid.UUID:
    """Insert a user (once) and a workspace with plain SQL; return the workspace's id."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO users (username, password_hash) VALUES ('owner', '!') "
            "ON CONFLICT DO NOTHING"
        )
        row = conn.execute(
            """INSERT INTO workspaces (owner_id, name)
               SELECT id, %s FROM users WHERE username = 'owner' RETURNING id""",
            [name],
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


@pytest.fixture
def workspace_id(database_url: str) -> uuid.UUID:
    """A fresh workspace in a fresh database."""
    return create_workspace(database_url)


@pytest.fixture
def db(database_url: str, jp_asyncio_loop: asyncio.AbstractEventLoop) -> Iterator[Database]:
    """The platform's pool on the test database, closed after the test."""
    database = Database(database_url, max_size=4)
    yield database
    jp_asyncio_loop.run_until_complete(database.close())


@pytest.fixture
def make_pg(db: Database, workspace_id: uuid.UUID) -> Callable[..., PostgresContentsManager]:
    """Make PostgresContentsManagers of the test workspace (traits as keywords)."""

    def make(**traits: Any) -> PostgresContentsManager:
        return PostgresContentsManager(
            db=db, workspace_id=workspace_id, config=manager_config(), **traits
        )

    return make


@pytest.fixture
def pg(make_pg: Callable[..., PostgresContentsManager]) -> PostgresContentsManager:
    """Our manager alone, for behaviour Jupyter does not have."""
    return make_pg()
