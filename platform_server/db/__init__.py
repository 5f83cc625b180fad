"""The platform's PostgreSQL access: one async connection pool, transactions, health."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from platform_server.errors import DatabaseUnavailable

Connection: TypeAlias = psycopg.AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Connection]

UNAVAILABLE_MESSAGE = "The database is unavailable. Try again in a few seconds."
# While PostgreSQL is down, at most one request per interval (seconds) tries to reach it;
# the others are answered 503 at once instead of each waiting for the pool's timeout.
PROBE_INTERVAL = 0.5
# A connection back in the pool for less than this (seconds) is handed out unchecked: it was
# fine a moment ago, and the check costs a round trip on every request.
CHECK_AFTER_IDLE = 2.0


class Database:
    """An ``AsyncConnectionPool`` that fails fast while PostgreSQL is down and recovers.

    The pool opens on first use, so it binds to whichever event loop serves requests. A
    connection idle for more than ``CHECK_AFTER_IDLE`` seconds is checked as it leaves the
    pool, so a restarted server costs (almost) no request an error once it is back.
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
        self.max_size = max_size
        self.timeout = timeout
        self.log = log or logging.getLogger(__name__)
        self._pool = self._new_pool()
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._down = False
        self._probe_lock = asyncio.Lock()
        self._last_probe = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        self._returned_at: weakref.WeakKeyDictionary[Connection, float] = (
            weakref.WeakKeyDictionary()
        )

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "row_factory": dict_row,
            "connect_timeout": max(1, int(self.timeout)),
            # Transactions are explicit (``transaction``); a lone statement commits itself.
            "autocommit": True,
        }

    def _new_pool(self) -> Pool:
        return AsyncConnectionPool(
            self.conninfo,
            connection_class=psycopg.AsyncConnection[DictRow],
            kwargs=self._connect_kwargs(),
            min_size=1,
            max_size=self.max_size,
            timeout=self.timeout,
            check=self._check,
            reset=self._note_return,
            open=False,
            name="platform",
        )

    async def _check(self, conn: Connection) -> None:
        """Check a connection leaving the pool, unless it was in use a moment ago."""
        returned = self._returned_at.get(conn)
        if returned is None or time.monotonic() - returned > CHECK_AFTER_IDLE:
            await AsyncConnectionPool.check_connection(conn)

    async def _note_return(self, conn: Connection) -> None:
        self._returned_at[conn] = time.monotonic()

    async def _ensure_open(self) -> Pool:
        pool = self._pool
        if not self._opened:
            async with self._open_lock:
                if not self._opened:
                    await pool.open(wait=False)
                    self._opened = True
        return pool

    @asynccontextmanager
    async def transaction(self, *, pipeline: bool = False) -> AsyncIterator[Connection]:
        """A connection inside one transaction, committed when the block ends without error.

        Store functions take this connection and never open transactions of their own.
        ``pipeline``: statements (BEGIN and COMMIT included) are sent without waiting for the
        ones before; each waits only when its result is fetched, so a hot path that sends
        its statements before reading them pays one round trip for all. Errors and
        ``rowcount`` arrive with the next fetch (or at COMMIT).
        """
        async with self.connection() as conn:
            if pipeline:
                async with conn.pipeline(), conn.transaction():
                    yield conn
            else:
                async with conn.transaction():
                    yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection on which every statement commits on its own.

        For work that is one statement (a read, or a write that stands alone): it costs one
        round trip to PostgreSQL, where a transaction adds a BEGIN and a COMMIT.
        """
        if self._down:
            await self._probe()
        pool = await self._ensure_open()
        try:
            async with pool.connection() as conn:
                yield conn
        except PoolTimeout as e:
            if not self._down:
                self.log.warning("database | unreachable; answering 503 until it is back")
            self._down = True
            raise DatabaseUnavailable(UNAVAILABLE_MESSAGE) from e
        except psycopg.OperationalError as e:
            self.log.warning("database | connection failed: %s", type(e).__name__)
            raise DatabaseUnavailable(UNAVAILABLE_MESSAGE) from e

    @asynccontextmanager
    async def dedicated_connection(self) -> AsyncIterator[Connection]:
        """A connection of its own, outside the pool, closed when the block ends.

        For a session held through long work that itself takes pooled connections, such as an
        advisory lock kept while a sandbox starts: were it taken from the pool, as many of
        them as the pool has connections would leave none to the work under them, nor to any
        request, until the pool timed out and the database was taken for down. Connecting
        costs a few milliseconds; the server's ``max_connections`` bounds how many exist.
        """
        if self._down:
            await self._probe()
        try:
            conn: Connection = await psycopg.AsyncConnection.connect(
                self.conninfo, **self._connect_kwargs()
            )
            async with conn:
                yield conn
        except psycopg.OperationalError as e:
            self.log.warning("database | connection failed: %s", type(e).__name__)
            raise DatabaseUnavailable(UNAVAILABLE_MESSAGE) from e

    async def _probe(self) -> None:
        """While down: one request at a time checks whether PostgreSQL is back; others fail."""
        if self._probe_lock.locked():
            raise DatabaseUnavailable(UNAVAILABLE_MESSAGE)
        async with self._probe_lock:
            if not self._down:
                return
            if time.monotonic() - self._last_probe < PROBE_INTERVAL:
                raise DatabaseUnavailable(UNAVAILABLE_MESSAGE)
            self._last_probe = time.monotonic()
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=2)
            except psycopg.OperationalError as e:
                raise DatabaseUnavailable(UNAVAILABLE_MESSAGE) from e
            await conn.close()
            # A fresh pool: the old one may be backing off for minutes between reconnections.
            old, self._pool, self._opened = self._pool, self._new_pool(), False
            self._down = False
            task = asyncio.create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            self.log.info("database | reachable again")

    def reconnect(self) -> None:
        """Take the pool's connections for broken (their server restarted, or is restarting):
        the next request checks at once whether the server answers and, if it does, opens a
        fresh pool; until then requests are answered 503 without waiting."""
        self._down = True
        self._last_probe = 0.0

    async def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless PostgreSQL answers a query."""
        async with self.connection() as conn:
            await conn.execute("SELECT 1")

    def close_abandoned(self) -> None:
        """Close the idle connections of a pool whose event loop has been closed.

        ``close`` needs the loop the pool opened in; once that loop is closed, the pool's tasks
        are dead, and only its connections are left to close (at once, here). The pool is
        dropped with its tasks (and a connection one of them was opening, closed when it is
        collected); a later use opens a new one.
        """
        for conn in list(self._pool._pool):
            conn.pgconn.finish()
        self._pool, self._opened = self._new_pool(), False

    async def close(self) -> None:
        """Close every connection; the pool cannot be used afterwards."""
        if self._opened:
            await self._pool.close()
            self._opened = False
        await asyncio.gather(*self._closing)
