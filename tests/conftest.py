"""Fixtures: one real PostgreSQL per run, a fresh database and a real PlatformApp per test."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.serverapp import ServerApp
from psycopg.conninfo import conninfo_to_dict
from traitlets.config import Config

from platform_server.app import PlatformApp
from platform_server.db.migrate import apply_migrations
from tests import postgres
from tests.client import Client
from tests.workspace_fixtures import db, make_pg, pg, workspace_id  # noqa: F401  (fixtures)

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin conninfo of the run's PostgreSQL server."""
    with postgres.postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture(scope="session")
def migrated_template(pg_admin_url: str) -> Iterator[str]:
    """A database with every migration applied, copied for each test (fast CREATE DATABASE)."""
    url = postgres.create_database(pg_admin_url)
    apply_migrations(url, logging.getLogger("tests"))
    yield str(conninfo_to_dict(url)["dbname"])
    postgres.drop_database(pg_admin_url, url)


@pytest.fixture
def database_url(pg_admin_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    url = postgres.create_database(pg_admin_url, template=migrated_template)
    yield url
    postgres.drop_database(pg_admin_url, url)


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    """Per-module config overrides (a dict of config sections); override in a module."""
    return {}


@pytest.fixture
def jp_base_url() -> str:
    """The platform is served at the root in tests."""
    return "/"


@pytest.fixture
def jp_auth_header() -> dict[str, str]:
    """No shared server token exists; tests authenticate as real users."""
    return {}


def platform_config(database_url: str, overrides: dict[str, Any]) -> Config:
    """Test defaults (cheap bcrypt, no login delays) merged with a module's overrides."""
    config = Config(
        {
            "PlatformApp": {"db_url": database_url},
            "Accounts": {"bcrypt_cost": 4, "failure_delay": 0.0},
            # Tests that want a warm pool or a spare kernel ask for one; the others start
            # sandboxes on demand, without a kernel.
            "Spawner": {"warm_pool_size": 0, "spare_kernel": False},
        }
    )
    config.merge(Config(overrides))
    return config


async def stop_all_sandboxes(app: PlatformApp) -> None:
    """Sandboxes outlive the platform by design; a test's must not outlive the test."""
    sandboxes = app.web_app.settings.get("sandboxes")
    if sandboxes is not None:
        sandboxes.spawner.warm_pool_size = 0  # no refill of the pool while the test ends
        for handle in await sandboxes.spawner.find_running():
            await sandboxes.spawner.stop(handle)


@pytest.fixture
def jp_serverapp(
    jp_server_config: dict[str, Any],
    jp_argv: list[str],
    jp_http_port: int,
    jp_environ: None,
    jp_asyncio_loop: asyncio.AbstractEventLoop,
    database_url: str,
    tmp_path: Path,
) -> Iterator[PlatformApp]:
    """A real PlatformApp on a fresh database (pytest-jupyter's fixture, for our app)."""
    ServerApp.clear_instance()
    PlatformApp.clear_instance()
    app = PlatformApp.instance(
        config=platform_config(database_url, jp_server_config),
        port=jp_http_port,
        port_retries=0,
        open_browser=False,
        base_url="/",
        root_dir=str(tmp_path),
        log_level="DEBUG",
    )
    app.init_signal = lambda: None  # type: ignore[method-assign]

    async def initialize() -> None:
        app.initialize(argv=jp_argv, new_httpserver=False)

    jp_asyncio_loop.run_until_complete(initialize())
    app.start_app()
    # What ServerApp.start_ioloop schedules, minus the IOLoop (the test's loop runs it).
    jp_asyncio_loop.run_until_complete(app.extension_manager.start_all_extensions())
    yield app
    jp_asyncio_loop.run_until_complete(stop_all_sandboxes(app))
    # Private, as in pytest-jupyter's jp_server_cleanup: the public stop() also stops the IOLoop.
    jp_asyncio_loop.run_until_complete(app._cleanup())
    PlatformApp.clear_instance()
    ServerApp.clear_instance()


@pytest.fixture
def base_url(http_server_client: Any) -> str:
    """The URL of the test server."""
    return str(http_server_client.get_url(""))


@pytest.fixture
def client(base_url: str) -> Client:
    """An anonymous client (a fresh browser)."""
    return Client(base_url)


PASSWORD = "correct horse"

UserFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_user(base_url: str) -> UserFactory:
    """Register a user and return a client logged in as them (cookie + XSRF)."""

    async def make(
        username: str = "alice", password: str = "correct horse", **extra: Any
    ) -> Client:
        browser = Client(base_url)
        response = await browser.post(
            "/api/accounts/register", {"username": username, "password": password, **extra}
        )
        assert response.status == 201, response.body
        response = await browser.post(
            "/api/accounts/login", {"username": username, "password": password}
        )
        assert response.status == 200, response.body
        return browser

    return make


@pytest.fixture
def make_token_client(base_url: str, make_user: UserFactory) -> Callable[..., Awaitable[Client]]:
    """Register a user and return an API client authenticated with a fresh token."""

    async def make(username: str = "alice", **extra: Any) -> Client:
        browser = await make_user(username, **extra)
        response = await browser.post("/api/accounts/tokens", {"name": "tests"})
        assert response.status == 201, response.body
        return Client(base_url, token=response.json["token"])

    return make
