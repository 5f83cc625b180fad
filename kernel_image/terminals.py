"""Terminals: terminado's named PTYs, each read as it becomes readable, with scrollback and
backpressure.

terminado reads a PTY in an IOLoop callback and writes to every client without waiting, so a
client that reads slowly makes the server buffer without bound. Here a terminal's PTY is read
(a frame of up to 64 KB) when it becomes readable, the frame is stored in the scrollback ring and
written to every client, and if a client's socket could not take it at once, the terminal stops
reading until that client has taken it. A slow client therefore stops the reading, the PTY fills
up and the program writing to it blocks: memory stays bounded. Keyboard input is written to the
PTY as it arrives, independently of the reading, so Ctrl-C still interrupts a flood at once.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypedDict

from terminado.management import MaxTerminalsReached, NamedTermManager, PtyWithClients

from kernel_image.config import AgentConfig
from kernel_image.scrollback import Scrollback
from kernel_image.timefmt import isoformat

log = logging.getLogger(__name__)

FRAME_BYTES = 64 * 1024
"""The most output bytes sent in one ``["stdout", ...]`` message."""
STDIN_BACKLOG_BYTES = 1024 * 1024
"""The most input bytes kept while the PTY does not take them (the program is not reading)."""
SHELL_COMMAND = ["bash"]

__all__ = [
    "MaxTerminalsReached",
    "Terminal",
    "TerminalClient",
    "TerminalExistsError",
    "TerminalManager",
    "TerminalModel",
]


class TerminalModel(TypedDict):
    """A terminal as the REST API shows it."""

    name: str
    last_activity: str
    output_offset: int


class TerminalClient(Protocol):
    """What a terminal needs from a connected client (the WebSocket handler)."""

    size: tuple[int | None, int | None]
    """Rows and columns the client last asked for (None before it asked)."""

    def send_output(self, message: str) -> asyncio.Future[None] | None:
        """Send a JSON message; a future that resolves when the client has taken it, or None
        when it took it at once (or is already gone)."""

    def drop(self, code: int, reason: str) -> None:
        """Disconnect the client (it fell too far behind)."""

    def terminal_exited(self) -> None:
        """Tell the client the terminal is gone (``["disconnect", 1]``) and close."""


class TerminalExistsError(Exception):
    """A terminal of that name exists already."""


class InputBacklogFullError(Exception):
    """The program is not reading its input and the backlog is full."""


def session_pids(sid: int) -> list[int]:
    """Processes in session ``sid`` (from /proc; just ``[sid]`` where /proc is unreadable)."""
    pids = []
    try:
        entries = os.listdir("/proc")  # noqa: PTH208 (names only, no Path objects)
    except OSError:
        return [sid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_bytes()
        except OSError:
            continue
        # After "pid (comm) ": state ppid pgrp session ... (comm may hold spaces and parens).
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids or [sid]


class Terminal(PtyWithClients):
    """A PTY running a shell, its scrollback and its clients."""

    clients: list[TerminalClient]

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        *,
        scrollback_bytes: int,
        stalled_client_timeout: float,
        on_input: Callable[[], None],
    ) -> None:
        super().__init__(argv, env, cwd)
        # ptyprocess sleeps (blocking) in close(); we only close once the child is reaped.
        self.ptyproc.delayafterclose = 0
        self.fd: int = self.ptyproc.fd
        self.pid: int = self.ptyproc.pid
        os.set_blocking(self.fd, False)
        self.scrollback = Scrollback(scrollback_bytes)
        self.stalled_client_timeout = stalled_client_timeout
        self.last_activity = time.time()
        self.exited = asyncio.Event()
        self._on_input = on_input
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stdin = bytearray()
        self._on_exit: Callable[[Terminal], None] | None = None
        self._paused: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def name(self) -> str:
        """The terminal's name ("1", "2", ...)."""
        return self.term_name or ""

    def model(self) -> TerminalModel:
        """The REST representation."""
        return {
            "name": self.name,
            "last_activity": isoformat(self.last_activity),
            "output_offset": self.scrollback.end,
        }

    # -- output -------------------------------------------------------------------------------

    def start(self, on_exit: Callable[[Terminal], None]) -> None:
        """Start reading the PTY; ``on_exit`` runs once it has closed."""
        self._on_exit = on_exit
        asyncio.get_running_loop().add_reader(self.fd, self._read_available)

    def _read_available(self) -> None:
        """Publish a frame of what the PTY has; stop reading until every client has it."""
        try:
            data = self._read_frame()
            if data is None:
                self._stop_reading()
                return
            in_flight = self._publish(self._decoder.decode(data))
        except Exception:
            log.exception("terminal %s | reader failed", self.name)
            self._stop_reading()
            return
        if in_flight:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.fd)
            self._paused = loop.create_task(self._read_when_taken(in_flight))

    async def _read_when_taken(
        self, in_flight: list[tuple[TerminalClient, asyncio.Future[None]]]
    ) -> None:
        """Read on once the clients have taken the last frame (or were dropped)."""
        try:
            await self._wait_for_clients(in_flight)
        except Exception:
            log.exception("terminal %s | reader failed", self.name)
            self._stop_reading()
            return
        if not self.exited.is_set():
            asyncio.get_running_loop().add_reader(self.fd, self._read_available)

    def _read_frame(self) -> bytes | None:
        """What the PTY has now, up to one frame; None at end of file."""
        frame = bytearray()
        while len(frame) < FRAME_BYTES:
            try:
                chunk = os.read(self.fd, FRAME_BYTES - len(frame))
            except BlockingIOError:
                break
            except OSError as e:
                # EIO is how Linux says every process closed the terminal's other side.
                if e.errno != errno.EIO:
                    log.warning("terminal %s | read failed: %s", self.name, e)
                chunk = b""
            if not chunk:
                return bytes(frame) if frame else None
            frame += chunk
        return bytes(frame)

    def _stop_reading(self) -> None:
        """The PTY closed (or is abandoned): flush, tell the clients, run ``on_exit``. Once."""
        if self.exited.is_set():
            return
        asyncio.get_running_loop().remove_reader(self.fd)
        if self._paused is not None:
            self._paused.cancel()
        self._publish(self._decoder.decode(b"", final=True))
        self.exited.set()
        for client in list(self.clients):
            client.terminal_exited()
        self.clients.clear()
        if self._on_exit is not None:
            self._on_exit(self)

    def _publish(self, text: str) -> list[tuple[TerminalClient, asyncio.Future[None]]]:
        """Store output and queue it to every client; return the writes still in flight."""
        if not text:
            return []
        self.scrollback.append(text.encode())
        self.last_activity = time.time()
        message = json.dumps(["stdout", text], ensure_ascii=False)
        in_flight = []
        for client in list(self.clients):
            future = client.send_output(message)
            if future is not None and not future.done():
                in_flight.append((client, future))
        return in_flight

    async def _wait_for_clients(
        self, in_flight: list[tuple[TerminalClient, asyncio.Future[None]]]
    ) -> None:
        """Wait until every client has taken the last frame; drop one stuck for too long."""
        _, stuck = await asyncio.wait(
            [future for _, future in in_flight], timeout=self.stalled_client_timeout
        )
        for client, future in in_flight:
            if future in stuck:
                log.warning(
                    "terminal %s | dropping a client that read nothing for %.0fs",
                    self.name,
                    self.stalled_client_timeout,
                )
                client.drop(1013, "client too slow: output not read in time")

    # -- clients and input --------------------------------------------------------------------

    def attach(self, client: TerminalClient, since: int | None) -> str:
        """Add a client; return the scrollback after ``since`` to replay to it first.

        Synchronous on purpose: the client sees the replay and then every later frame, with
        no gap and no repeat, because nothing else runs between this and its first writes.
        """
        self.clients.append(client)
        return self.scrollback.since(since).decode("utf-8", errors="replace")

    def detach(self, client: TerminalClient) -> None:
        """Remove a client (it disconnected) and fit the size to those left."""
        if client in self.clients:
            self.clients.remove(client)
            if not self._closed:
                self.resize_to_smallest()

    def resize(self) -> None:
        """Fit the PTY to the smallest size any client asked for."""
        if not self._closed:
            self.resize_to_smallest()

    def write_input(self, data: bytes) -> None:
        """Write keyboard input to the PTY now; keep what it cannot take yet, in order."""
        self.last_activity = time.time()
        self._on_input()
        if self._closed or not data:
            return
        if self._stdin:
            if b"\x03" in data:
                # Ctrl-C must not wait behind input the program is not reading; the line
                # discipline discards pending input on an interrupt anyway.
                self._stdin.clear()
            elif len(self._stdin) + len(data) > STDIN_BACKLOG_BYTES:
                raise InputBacklogFullError
            self._stdin += data
            return
        written = self._write_some(data)
        if written < len(data):
            self._stdin += data[written:]
            asyncio.get_running_loop().add_writer(self.fd, self._flush_input)

    def _write_some(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            return len(data)  # the terminal is closing: nobody will read this input

    def _flush_input(self) -> None:
        del self._stdin[: self._write_some(self._stdin)]
        if not self._stdin:
            asyncio.get_running_loop().remove_writer(self.fd)

    # -- ending -------------------------------------------------------------------------------

    def signal_session(self, sig: int) -> None:
        """Send ``sig`` to every process of the terminal's session (its shell and jobs)."""
        if self.ptyproc.terminated:
            return  # the shell is reaped: its pid, the session id, may belong to another
        for pid in session_pids(self.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    async def _wait_exited(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.exited.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def terminate(self, force: bool = True, grace: float = 1.0) -> bool:
        """Hang up the session; SIGKILL what is left after ``grace`` seconds. Returns True."""
        self.signal_session(signal.SIGHUP)
        self.signal_session(signal.SIGCONT)
        if not await self._wait_exited(grace):
            self.signal_session(signal.SIGKILL)
            if not await self._wait_exited(1.0):
                # A process outside the session (it called setsid) holds the PTY open.
                self._stop_reading()
        await self.close()
        return True

    async def close(self) -> None:
        """Reap the shell and close the PTY (once the reader has ended). Safe to call twice."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self, patience: float = 4.0) -> None:
        self._closed = True
        self._stop_reading()
        if self._stdin:
            self._stdin.clear()
            asyncio.get_running_loop().remove_writer(self.fd)
        started = time.monotonic()
        killed = False
        while self._alive():
            waited = time.monotonic() - started
            if not killed and waited > patience / 2:
                self.signal_session(signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                killed = True
            if waited > patience:
                log.warning("terminal %s | shell %d did not exit", self.name, self.pid)
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(OSError):
            self.ptyproc.fileobj.close()
        self.ptyproc.closed = True

    def _alive(self) -> bool:
        try:
            return bool(self.ptyproc.isalive())
        except Exception:  # ptyprocess raises its own error when the child was reaped already
            return False


class TerminalManager(NamedTermManager):
    """terminado's ``NamedTermManager`` with our terminals: names "1", "2", ... as Jupyter has."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(
            shell_command=SHELL_COMMAND,
            max_terminals=config.max_terminals,
            # Programs read the size from the PTY; stale COLUMNS/LINES would override it.
            extra_env={"COLUMNS": None, "LINES": None, "AGENT_TOKEN": None},
        )
        self.config = config
        self.last_input: float | None = None
        """Unix time of the last keyboard input to any terminal (None before any)."""
        self._ending: set[asyncio.Task[None]] = set()

    def get(self, name: str) -> Terminal | None:
        """The live terminal of that name, or None."""
        terminal = self.terminals.get(name)
        return terminal if isinstance(terminal, Terminal) else None

    def running(self) -> list[Terminal]:
        """Live terminals, in the order they started."""
        return [t for t in self.terminals.values() if isinstance(t, Terminal)]

    def create(self, name: str | None = None, cwd: str | None = None) -> Terminal:
        """Start a shell in a new terminal (in ``cwd``, default the root)."""
        if name is not None and name in self.terminals:
            raise TerminalExistsError(name)
        if len(self.terminals) >= self.config.max_terminals:
            raise MaxTerminalsReached(self.config.max_terminals)
        options: dict[str, Any] = {"cwd": cwd or self.config.root}
        if name is not None:
            options["name"] = name
        _, terminal = self.new_named_terminal(**options)
        assert isinstance(terminal, Terminal)  # noqa: S101 (new_terminal makes only these)
        return terminal

    def new_terminal(self, **kwargs: Any) -> PtyWithClients:
        """Make a :class:`Terminal` (terminado's hook)."""
        options = {**self.term_settings, "shell_command": self.shell_command, **kwargs}
        return Terminal(
            options["shell_command"],
            self.make_term_env(**options),
            options["cwd"],
            scrollback_bytes=self.config.scrollback_bytes,
            stalled_client_timeout=self.config.stalled_client_timeout,
            on_input=self._note_input,
        )

    def start_reading(self, ptywclients: PtyWithClients) -> None:
        """Start the terminal's own reader task (instead of terminado's IOLoop handler)."""
        assert isinstance(ptywclients, Terminal)  # noqa: S101
        ptywclients.start(self._on_terminal_exit)

    def _note_input(self) -> None:
        self.last_input = time.time()

    def _on_terminal_exit(self, terminal: Terminal) -> None:
        if self.terminals.get(terminal.name) is terminal:
            del self.terminals[terminal.name]
        log.info("terminal %s | closed", terminal.name)
        task = asyncio.get_running_loop().create_task(terminal.close())
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def delete(self, name: str) -> None:
        """End a terminal: hang up its session, kill what remains, reap, close."""
        terminal = self.get(name)
        if terminal is None:
            raise KeyError(name)
        await terminal.terminate()

    async def kill_all(self) -> None:
        """End every terminal (at shutdown)."""
        await asyncio.gather(*(t.terminate(grace=0.5) for t in self.running()))
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
        self.terminals = {}
