"""A language server process: started as the sandbox user's neighbour, spoken to in LSP's
``Content-Length`` framing over its stdin and stdout, measured and killed as one session.

The server is user code's neighbour, not the agent's: it gets the environment kernels get
(without the agent's token or import path), no descriptor of the agent's but its stdin, stdout
and stderr, its own session (so that it and every process it starts, jedi's inspection
subprocess and ``ruff`` runs, can be measured and killed together), and the root as its
working folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernel_image.terminals import session_pids

log = logging.getLogger(__name__)

HIDDEN_ENV = frozenset({"AGENT_TOKEN", "PYTHONPATH"})
"""Variables of the agent's environment a language server must not get."""
MAX_HEADER_BYTES = 8 * 1024
"""The longest header block a server may write before its body."""
STDERR_LINE_BYTES = 2000
"""The most of one line of the server's stderr copied into the agent's log."""
STOP_GRACE = 2.0
"""Seconds a stopped server may take to exit after SIGTERM before its session is SIGKILLed."""


class ServerOutputError(Exception):
    """The server wrote something that is not an LSP message (the text says what)."""


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a language server: the agent's, less what only the agent may see."""
    return {k: v for k, v in environ.items() if k not in HIDDEN_ENV}


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as LSP's base protocol frames it."""
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


async def read_message(stream: asyncio.StreamReader, max_bytes: int) -> dict[str, Any] | None:
    """The next message on ``stream``, None at its end; ``ServerOutputError`` when what comes is
    not a message or its body is bigger than ``max_bytes``."""
    length: int | None = None
    header_bytes = 0
    while True:
        line = await stream.readline()
        if not line:
            return None
        header_bytes += len(line)
        if header_bytes > MAX_HEADER_BYTES:
            msg = "headers too long"
            raise ServerOutputError(msg)
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                msg = "bad Content-Length"
                raise ServerOutputError(msg) from None
    if length is None or length < 0:
        msg = "a message without Content-Length"
        raise ServerOutputError(msg)
    if length > max_bytes:
        msg = f"a message of {length} bytes (more than {max_bytes})"
        raise ServerOutputError(msg)
    try:
        body = await stream.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
    try:
        message = json.loads(body)
    except ValueError:
        msg = "a body that is not JSON"
        raise ServerOutputError(msg) from None
    if not isinstance(message, dict):
        msg = "a body that is not a JSON object"
        raise ServerOutputError(msg)
    return message


def session_rss(sid: int) -> int:
    """Resident memory, in bytes, of every process of session ``sid`` together."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in session_pids(sid):
        try:
            # statm: size resident shared ... (in pages)
            total += int(Path("/proc", str(pid), "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


class LanguageServerProcess:
    """One running server. ``start`` it, ``send`` messages, ``receive`` them, ``stop`` it."""

    def __init__(self, name: str, argv: list[str], cwd: str, max_message_bytes: int) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.max_message_bytes = max_message_bytes
        self.killed_because: str | None = None
        """Why the bridge killed the server, None unless it did."""
        self._process: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid (its session's id), None before it started."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the server in the root, in a session of its own."""
        self._process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=child_env(os.environ),
            close_fds=True,
            start_new_session=True,
            limit=MAX_HEADER_BYTES,
        )
        self._stderr_task = asyncio.create_task(self._log_stderr())
        log.info("lsp %s | started, pid %d", self.name, self._process.pid)

    def write(self, message: Mapping[str, Any]) -> None:
        """Queue one message for the server's stdin at once (dropped once it has exited);
        messages reach it in the order they were written."""
        process = self._process
        if process is None or process.stdin is None or process.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):  # exited: the reader sees it
            process.stdin.write(encode(message))

    async def send(self, message: Mapping[str, Any]) -> None:
        """``write``, then wait until the server has taken what was queued."""
        self.write(message)
        process = self._process
        if process is not None and process.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await process.stdin.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The server's next message, None once its output has ended."""
        assert self._process is not None  # noqa: S101  (started)
        assert self._process.stdout is not None  # noqa: S101
        return await read_message(self._process.stdout, self.max_message_bytes)

    def memory(self) -> int:
        """Resident bytes of the server and every process it started."""
        pid = self.pid
        return session_rss(pid) if pid is not None and self.running else 0

    @property
    def running(self) -> bool:
        """Whether the server process has not exited (or not been reaped) yet."""
        return self._process is not None and self._process.returncode is None

    def kill(self, because: str) -> None:
        """SIGKILL the server's whole session at once, noting why."""
        self.killed_because = because
        self._signal_session(signal.SIGKILL)

    async def stop(self) -> None:
        """End the server and every process of its session; reap it."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            self._signal_session(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                self._signal_session(signal.SIGKILL)
                await process.wait()
        # Whatever it started and left behind (a ruff run) goes too.
        self._signal_session(signal.SIGKILL)
        if self._stderr_task is not None:
            # A process that left the session could hold stderr open: do not wait for it.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._stderr_task, STOP_GRACE)

    async def wait(self) -> int:
        """Wait for the server to exit; its exit status."""
        assert self._process is not None  # noqa: S101  (started)
        return await self._process.wait()

    def _signal_session(self, sig: int) -> None:
        process = self._process
        if process is None:
            return
        for pid in session_pids(process.pid):
            if pid == process.pid and process.returncode is not None:
                continue  # reaped: its pid may belong to another process now
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    async def _log_stderr(self) -> None:
        """Copy the server's stderr into the agent's log, a line at a time (bounded)."""
        assert self._process is not None  # noqa: S101
        stream = self._process.stderr
        assert stream is not None  # noqa: S101
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than the limit: asyncio has dropped it
                continue
            if not line:
                return
            text = line[:STDERR_LINE_BYTES].decode(errors="replace").rstrip()
            if text:
                log.info("lsp %s | %s", self.name, text)
