"""An embedded PostgreSQL server (``pgserver``) in the platform's data folder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
from psycopg import sql
from traitlets import Float
from traitlets.config import LoggingConfigurable

from platform_server.metrics import DATABASE_RESTARTS

DATABASE_NAME = "platform"

T = TypeVar("T")


async def in_daemon_thread(work: Callable[[], T], name: str) -> T:
    """Run blocking ``work`` in a daemon thread: unlike ``asyncio.to_thread``, work that
    never returns (a ``pg_ctl`` waiting on a hung server) cannot keep the process from
    exiting."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the waiter gave up
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as e:  # handed to the waiter, which re-raises it
            error = e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


class EmbeddedPostgres(LoggingConfigurable):
    """Runs PostgreSQL from the ``pgserver`` wheel; no system package is needed.

    The server listens only on a Unix socket inside its data folder. When this process runs as
    root, pgserver runs PostgreSQL as its own unprivileged system user. ``supervise`` restarts
    it when its postmaster is found gone (killed, or crashed): PostgreSQL's crash recovery
    replays the write-ahead log, so every committed transaction is there again.
    """

    check_interval = Float(
        1.0,
        help="Seconds between two checks that the embedded PostgreSQL's postmaster still runs. "
        "0 disables supervision: a server that dies stays down until the platform restarts.",
    ).tag(config=True)

    restart_delay = Float(
        1.0,
        help="Seconds before the next try after a failed restart of the embedded PostgreSQL "
        "(or before restarting one that died soon after its last restart); doubled after each "
        "failure up to max_restart_delay. 0: retry at once.",
    ).tag(config=True)

    max_restart_delay = Float(
        30.0,
        help="Most seconds between two tries to restart the embedded PostgreSQL. A server that "
        "stayed up this long is restarted at once when it dies.",
    ).tag(config=True)

    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pgdata = data_dir / "pgdata"
        self._server: Any = None
        self._postmaster: psutil.Process | None = None
        self._started_at = 0.0
        self.restarting = False
        self.restarts = 0

    def start(self) -> str:
        """Start (or join) the server and return the conninfo of the platform's database."""
        # Slow to import, and only needed without DATABASE_URL.
        from pgserver.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.log.info("database | starting embedded PostgreSQL in %s", self.pgdata)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        self._close_data_dir()
        self._watch_postmaster()
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
            server, self._server = self._server, None
            # pg_ctl runs as pgserver's user without its group: let it through meanwhile.
            data_dir = self.pgdata.parent
            if getattr(server, "system_user", None) is not None:
                data_dir.chmod(0o711)
            try:
                server.cleanup()
            finally:
                data_dir.chmod(0o700)

    def _close_data_dir(self) -> None:
        """Give the data folder back its 0700 after pgserver opened it (and its parents) to
        everyone (o+rx) for its user: as root, that user's group may only enter it (0710)."""
        data_dir = self.pgdata.parent
        system_user = getattr(self._server, "system_user", None)
        if system_user is None:
            data_dir.chmod(0o700)
            return
        os.chown(data_dir, -1, pwd.getpwnam(system_user).pw_gid)
        data_dir.chmod(0o710)

    def _watch_postmaster(self) -> None:
        self._postmaster = psutil.Process(self._server.get_pid())
        self._started_at = time.monotonic()

    def running(self) -> bool:
        """Whether the postmaster this object started (or joined) still runs."""
        postmaster = self._postmaster
        try:
            # is_running() also compares the start time, so a reused pid is not taken for it;
            # a killed postmaster that nobody reaped yet is a zombie.
            return (
                postmaster is not None
                and postmaster.is_running()
                and postmaster.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            process = psutil.Process(pid)
            return (
                process.status() != psutil.STATUS_ZOMBIE
                and process.name() == "postgres"
                and str(self.pgdata.resolve()) in process.cmdline()
            )
        except psutil.Error:
            return False

    def restart(self) -> None:
        """Start the server again after its postmaster died (blocking)."""
        server = self._server
        if server is None:
            return
        lock_files = [self.pgdata / "postmaster.pid"]
        socket_dir = server.get_postmaster_info().socket_dir
        if socket_dir is not None:
            lock_files.extend(Path(socket_dir).glob(".s.PGSQL.*.lock"))
        # PostgreSQL itself removes the lock files of a dead postmaster, but takes a zombie (or
        # a reused pid) for a live one, and so does pgserver: neither would ever start again.
        # Old backends still attached to the shared memory make the start fail instead, until
        # they have noticed their postmaster's death and exited.
        with server._lock:
            # As at start-up: as root, lets pgserver's user reach the folder again (its parents'
            # permissions may have changed since), without a new initdb.
            server.ensure_pgdata_inited()
            for lock_file in lock_files:
                try:
                    pid = int(lock_file.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
                if not self._is_our_postmaster(pid):
                    self.log.info(
                        "database | removing %s of dead postmaster %d", lock_file.name, pid
                    )
                    lock_file.unlink(missing_ok=True)
            server.ensure_postgres_running()
            # pg_ctl (pgserver's user, without its group) needed the folder open until now.
            self._close_data_dir()
        self._watch_postmaster()

    async def supervise(self, reconnect: Callable[[], None]) -> None:
        """Restart the server whenever its postmaster is found gone, until cancelled.

        Must be a coroutine. Each restart is logged and counted (``restarts``, and the
        ``platform_database_restarts_total`` metric); ``restarting`` is true meanwhile.
        ``reconnect`` is called when the server is found gone and again once it runs: the
        connections to the old server are all broken.
        """
        if self.check_interval <= 0:
            return
        delay = self.restart_delay
        while True:
            await asyncio.sleep(self.check_interval)
            if self._server is None or self.running():
                continue
            self.restarting = True
            reconnect()
            pid = self._postmaster.pid if self._postmaster else None
            self.log.warning("database | embedded PostgreSQL (pid %s) is gone; restarting it", pid)
            if time.monotonic() - self._started_at >= self.max_restart_delay:
                delay = self.restart_delay
            else:  # it died soon after its last start: do not restart it in a tight loop
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, self.restart_delay), self.max_restart_delay)
            while True:
                try:
                    await in_daemon_thread(self.restart, "embedded-postgres-restart")
                    break
                except Exception as e:
                    self.log.warning(
                        "database | restarting embedded PostgreSQL failed (%s: %s); "
                        "next try in %.1fs",
                        type(e).__name__,
                        e,
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, self.restart_delay), self.max_restart_delay)
            self.restarts += 1
            DATABASE_RESTARTS.inc()
            self.restarting = False
            reconnect()
            self.log.warning(
                "database | embedded PostgreSQL restarted (pid %s, restart %d)",
                self._postmaster.pid if self._postmaster else None,
                self.restarts,
            )
