"""The platform's PostgreSQL access: one async connection pool, transactions, health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from platform_server.errors import DatabaseUnavailable

Connection: TypeAlias = psycopg.AsyncConnection[DictRow]

UNAVAILABLE_MESSAGE = "The database is unavailable. Try again in a few seconds."


class Database:
    """An ``AsyncConnectionPool`` that turns connection failures into ``DatabaseUnavailable``.

    The pool opens on first use, so it binds to whichever event loop serves requests. Every
    connection is checked when it leaves the pool, so after PostgreSQL restarts the next
    request gets a fresh connection instead of an error.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int = 10,
        timeout: float = 5.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.log = log or logging.getLogger(__name__)
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            conninfo,
            connection_class=psycopg.AsyncConnection[DictRow],
            kwargs={"row_factory": dict_row, "connect_timeout": max(1, int(timeout))},
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="platform",
        )
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def _ensure_open(self) -> None:
        if self._opened:
            return
        async with self._open_lock:
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection inside one transaction, committed when the block ends without error.

        Store functions take this connection and never open transactions of their own.
        """
        await self._ensure_open()
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as e:
            self.log.warning("database | unavailable: %s", type(e).__name__)
            raise DatabaseUnavailable(UNAVAILABLE_MESSAGE) from e

    async def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless PostgreSQL answers a query."""
        async with self.transaction() as conn:
            await conn.execute("SELECT 1")

    async def close(self) -> None:
        """Close every connection; the pool cannot be used afterwards."""
        if self._opened:
            await self._pool.close()
            self._opened = False
