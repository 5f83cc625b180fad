"""The API edge of the contents manager and its checkpoints: domain errors become HTTP errors
(``DomainError.to_http``) and clients' paths become canonical."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from extensions.workspaces import paths
from platform_server.db import Connection, Database
from platform_server.errors import DomainError, PlatformError


@asynccontextmanager
async def http_transaction(
    db: Database | None, *, pipeline: bool = False
) -> AsyncIterator[Connection]:
    """One transaction whose domain errors reach the client as HTTP errors (the API edge);
    ``pipeline`` as in ``Database.transaction``."""
    async with _http_errors(), _bound(db).transaction(pipeline=pipeline) as conn:
        yield conn


@asynccontextmanager
async def http_connection(db: Database | None) -> AsyncIterator[Connection]:
    """As ``http_transaction``, for reads and lone statements (each commits on its own)."""
    async with _http_errors(), _bound(db).connection() as conn:
        yield conn


def bound_workspace(workspace_id: uuid.UUID | None) -> uuid.UUID:
    """The workspace a manager serves; a 500 error if it serves none (a configuration error)."""
    if workspace_id is None:
        msg = "This contents manager is not bound to a workspace."
        raise PlatformError(500, msg, reason="not_configured")
    return workspace_id


def _bound(db: Database | None) -> Database:
    if db is None:
        msg = "This contents manager is not bound to a database."
        raise PlatformError(500, msg, reason="not_configured")
    return db


@asynccontextmanager
async def _http_errors() -> AsyncIterator[None]:
    try:
        yield
    except DomainError as e:
        raise e.to_http() from e


def api_path(path: str) -> str:
    """The canonical form of a client's path; a 400 error when it has none."""
    try:
        return paths.canonical(path)
    except DomainError as e:
        raise e.to_http() from e
