"""The database layer: migrations, concurrent start-up, and surviving a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgserver._commands import pg_ctl
from pgserver.postgres_server import get_server

from platform_server.db.migrate import apply_migrations, load_migrations
from tests import postgres
from tests.client import Client
from tests.waiting import until

log = logging.getLogger("tests")


@pytest.fixture
def empty_database(pg_admin_url: str) -> Iterator[str]:
    """A database with no tables at all."""
    url = postgres.create_database(pg_admin_url)
    yield url
    postgres.drop_database(pg_admin_url, url)


def applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]


def test_migrations_apply_once_and_are_idempotent(empty_database: str) -> None:
    every_version = [m.version for m in load_migrations()]
    assert every_version[0] == 1
    assert apply_migrations(empty_database, log) == every_version
    assert apply_migrations(empty_database, log) == []
    assert applied_versions(empty_database) == every_version


def test_concurrent_start_ups_apply_each_migration_exactly_once(empty_database: str) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: apply_migrations(empty_database, log), range(4)))
    every_version = [m.version for m in load_migrations()]
    assert sorted(v for result in results for v in result) == every_version
    assert results.count([]) == 3
    assert applied_versions(empty_database) == every_version


class Outage:
    """A dedicated PostgreSQL server that a test can stop and start again."""

    def __init__(self, pgdata: Path) -> None:
        self.server = get_server(pgdata, cleanup_mode="delete")
        self.admin_url: str = self.server.get_uri("postgres")

    def stop(self) -> None:
        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    server = Outage(tmp_path_factory.mktemp("outage") / "pgdata")
    yield server
    server.start()
    server.server.cleanup()


@pytest.fixture
def database_url(outage: Outage) -> Iterator[str]:
    """This module's app runs on the server that the outage test stops."""
    url = postgres.create_database(outage.admin_url)
    apply_migrations(url, log)
    yield url
    outage.start()
    postgres.drop_database(outage.admin_url, url)


async def wait_for_status(api: Client, path: str, status: int) -> Any:
    """Poll until ``path`` answers ``status`` (recovery takes a moment); return the response."""

    async def answered() -> Any:
        response = await api.get(path)
        return response if response.status == status else None

    return await until(answered, f"{path} answers {status}", within=10, interval=0.1)


async def test_outage_answers_503_and_recovers(
    outage: Outage, make_token_client: Any, client: Client
) -> None:
    api = await make_token_client()
    assert (await api.get("/api/accounts/me")).status == 200

    await asyncio.to_thread(outage.stop)
    health = await client.get("/api/health")
    assert health.status == 503
    assert health.json == {"status": "unavailable", "database": "unavailable"}
    assert (await client.get("/api/health/live")).status == 200
    me = await api.get("/api/accounts/me")
    assert me.status == 503
    assert "database is unavailable" in me.json["message"]
    assert me.headers["Retry-After"]
    login = await client.post("/api/accounts/login", {"username": "alice", "password": "x" * 9})
    assert login.status == 503

    await asyncio.to_thread(outage.start)
    await wait_for_status(client, "/api/health", 200)
    me = await wait_for_status(api, "/api/accounts/me", 200)
    assert me.json["username"] == "alice"
