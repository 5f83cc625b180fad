"""The embedded package cache: proxpi (a read-only, caching proxy of one package index) served
by gunicorn on a Unix socket in the data folder, restarted if it dies.

proxpi is configured through its environment only. Its download timeout is raised from 0.9 s
(after which it would redirect clients to the upstream, which a sandbox cannot reach) to
``PackageIndex.download_timeout``. Its ``DELETE /cache/...`` routes are never reachable from a
sandbox: the platform forwards only ``GET`` and ``HEAD`` under ``/index/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

MAX_SOCKET_PATH = 100
"""Bytes of a Unix socket's path that every platform accepts (Linux: 107)."""
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
READY_TIMEOUT = 30.0


class EmbeddedCache:
    """One gunicorn process serving proxpi on ``socket``; ``supervise`` keeps it running."""

    def __init__(
        self,
        folder: Path,
        environment: dict[str, str],
        log: logging.Logger,
    ) -> None:
        self.folder = folder
        self.socket = folder / "cache.sock"
        self._socket_dir: str | None = None
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            # A deep data folder: the socket goes to a private folder of its own.
            self._socket_dir = tempfile.mkdtemp(prefix="package-cache-")
            self.socket = Path(self._socket_dir) / "cache.sock"
        self.environment = environment
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        """gunicorn with threads (proxpi's downloads block a thread each)."""
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"unix:{self.socket}",
            "--workers",
            "1",
            "--threads",
            "16",
            "--timeout",
            "0",
            "--graceful-timeout",
            "3",
            "--log-level",
            "warning",
            # No control socket under $HOME (platforms sharing a HOME would contend for it).
            "--no-control-socket",
            "proxpi.server:app",
        ]

    def start(self) -> None:
        """Start it, and restart it whenever it ends, in the background."""
        self._task = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        delay = RESTART_DELAY
        while True:
            started = time.monotonic()
            await self._run_once()
            self.ready.clear()
            if time.monotonic() - started > MAX_RESTART_DELAY:
                delay = RESTART_DELAY
            self.log.warning("packages | the package cache ended; restarting it in %.0fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _run_once(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **self.environment},
            cwd=self.folder,
        )
        try:
            await self._wait_ready()
            await self.process.wait()
        finally:
            if self.process.returncode is None:
                self.process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), 5)
                if self.process.returncode is None:
                    self.process.kill()
                    await self.process.wait()

    async def _wait_ready(self) -> None:
        """Poll ``/health`` until it answers, then set ``ready``."""
        deadline = time.monotonic() + READY_TIMEOUT
        connector = aiohttp.UnixConnector(path=str(self.socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < deadline and self.process and self.process.returncode is None:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get("http://cache/health") as response:
                        if response.status == 200:
                            self.ready.set()
                            self.log.info("packages | package cache ready (%s)", self.socket)
                            return
                await asyncio.sleep(0.1)
        self.log.error("packages | the package cache did not start within %.0fs", READY_TIMEOUT)

    async def close(self) -> None:
        """Stop supervising, and stop the process."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
